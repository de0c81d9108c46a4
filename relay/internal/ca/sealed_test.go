package ca

import (
	"bytes"
	"crypto/rand"
	"database/sql"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql's "pgx", for CHECKPOINT

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/internal/store"
)

// storeEngine is a database engine a CA in the store is tested on.
type storeEngine struct {
	name string
	dsn  func(t *testing.T) string
	// rawFiles are the files in which the engine keeps dsn's data at
	// rest, as an attacker with the disk (or a backup of it) reads them,
	// once what was committed is written to them.
	rawFiles func(t *testing.T, dsn string) []string
}

var storeEngines = []storeEngine{
	{"sqlite", sqliteDSN, func(t *testing.T, dsn string) []string {
		return []string{dsn, dsn + "-wal"} // the database and its write-ahead log
	}},
	{"postgres", postgresDSN, func(t *testing.T, dsn string) []string {
		// The test server commits asynchronously: a checkpoint writes
		// the write-ahead log and the tables' pages out.
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, "CHECKPOINT"); err != nil {
			t.Fatal(err)
		}
		// The whole cluster: tables, indexes, write-ahead log.
		var files []string
		filepath.WalkDir(pgtest.Shared(t).DataDir(), func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				files = append(files, path)
			}
			return nil
		})
		return files
	}},
}

func eachStoreEngine(t *testing.T, test func(t *testing.T, e storeEngine)) {
	for _, e := range storeEngines {
		t.Run(e.name, func(t *testing.T) { test(t, e) })
	}
}

// holds reports which of files hold needle.
func holds(t *testing.T, files []string, needle []byte) []string {
	t.Helper()
	var in []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed while we walked (a recycled log segment)
		}
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, needle) {
			in = append(in, f)
		}
	}
	return in
}

// TestKeysSealedAtRest: the CA's private keys are nowhere in the
// database's files, in PEM or in DER; the rows holding them name the KEK.
// A marker written in the clear is found the same way, so the search does
// see what the database writes.
func TestKeysSealedAtRest(t *testing.T) {
	eachStoreEngine(t, func(t *testing.T, e storeEngine) {
		dsn := e.dsn(t)
		st := openStore(t, dsn)
		kek := testKEK(t)
		s := InStore(st, kek)
		if _, _, err := LoadOrCreate(ctx, s, "tether.internal", t0); err != nil {
			t.Fatal(err)
		}
		if _, err := Rotate(ctx, s, t0, false); err != nil {
			t.Fatal(err)
		}
		marker := make([]byte, 48)
		rand.Read(marker)
		if err := s.WriteFile(ctx, "marker.crt", marker); err != nil {
			t.Fatal(err)
		}
		// Every write is done: the files hold all there is to find.
		files := e.rawFiles(t, dsn)
		if got := holds(t, files, marker); len(got) == 0 {
			t.Fatal("a file written in the clear is not found in the database's files: the search sees nothing")
		}
		for _, name := range []string{KeyFileOf(1), KeyFileOf(2)} {
			keyPEM := mustReadFile(t, s, name)
			b, _ := pem.Decode(keyPEM)
			if b == nil || b.Type != "PRIVATE KEY" {
				t.Fatalf("%s does not read back as a PEM private key", name)
			}
			row, err := st.CAFile(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if row.KEKID != kek.ID() {
				t.Errorf("%s's row names KEK %q, want %q", name, row.KEKID, kek.ID())
			}
			body := strings.Join(strings.Split(strings.TrimSpace(string(keyPEM)), "\n")[1:2], "") // the PEM's first line of base64
			for what, clear := range map[string][]byte{"PKCS#8 DER": b.Bytes, "PEM": keyPEM, "PEM body": []byte(body)} {
				if bytes.Contains(row.Data, clear) {
					t.Errorf("%s's row holds the key's %s", name, what)
				}
				if in := holds(t, files, clear); len(in) > 0 {
					t.Errorf("the key %s's %s is in the clear in %v", name, what, in)
				}
			}
		}
		// Certificates and the manifest stay in the clear, readable by
		// anyone with the database: they are public.
		for _, name := range []string{CertFile, CertFileOf(2), ManifestFile} {
			if row, err := st.CAFile(ctx, name); err != nil || row.KEKID != "" {
				t.Errorf("%s: KEK %q, %v; want it in the clear", name, row.KEKID, err)
			}
		}
	})
}

// TestWrongKEK: a relay given another KEK than the one the CA's keys were
// sealed with says so, naming both, and never makes a CA of its own; one
// given none says how to give one.
func TestWrongKEK(t *testing.T) {
	eachStoreEngine(t, func(t *testing.T, e storeEngine) {
		st := openStore(t, e.dsn(t))
		right := testKEK(t)
		c, _, err := LoadOrCreate(ctx, InStore(st, right), "tether.internal", t0)
		if err != nil {
			t.Fatal(err)
		}
		wrong := testKEK(t)
		_, err = Load(ctx, InStore(st, wrong))
		if !errors.Is(err, ErrWrongKEK) || !strings.Contains(err.Error(), right.ID()) || !strings.Contains(err.Error(), wrong.ID()) {
			t.Fatalf("Load with the wrong KEK: %v; want ErrWrongKEK naming %s and %s", err, right.ID(), wrong.ID())
		}
		if _, created, err := LoadOrCreate(ctx, InStore(st, wrong), "tether.internal", t0); !errors.Is(err, ErrWrongKEK) || created {
			t.Fatalf("LoadOrCreate with the wrong KEK: created %v, %v", created, err)
		}
		_, err = Load(ctx, InStore(st, nil))
		if !errors.Is(err, ErrNoKEK) || !strings.Contains(err.Error(), "--ca-kek-file") || !strings.Contains(err.Error(), "TETHER_CA_KEK") {
			t.Fatalf("Load without a KEK: %v; want ErrNoKEK naming --ca-kek-file and TETHER_CA_KEK", err)
		}
		if _, err := Rotate(ctx, InStore(st, wrong), t0, false); !errors.Is(err, ErrWrongKEK) {
			t.Fatalf("Rotate with the wrong KEK: %v", err)
		}
		// Nothing was changed by the refused calls.
		if again, err := Load(ctx, InStore(st, right)); err != nil || again.Fingerprint() != c.Fingerprint() || again.Rotating() {
			t.Fatalf("Load with the right KEK afterwards: %v", err)
		}
	})
}

// TestTamperedSealedKeys: a sealed key that was altered, cut, moved to
// another root's name or relabelled does not open; a key or certificate
// row that is not what relays write is refused.
func TestTamperedSealedKeys(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, st *store.Store, kek *KEK)
		want   error
	}{
		{"a bit flipped", func(t *testing.T, st *store.Store, kek *KEK) {
			f, _ := st.CAFile(ctx, KeyFile)
			f.Data[len(f.Data)/2] ^= 1
			st.PutCAFile(ctx, f)
		}, ErrSealBroken},
		{"tag cut off", func(t *testing.T, st *store.Store, kek *KEK) {
			f, _ := st.CAFile(ctx, KeyFile)
			f.Data = f.Data[:len(f.Data)-16]
			st.PutCAFile(ctx, f)
		}, ErrSealBroken},
		{"empty", func(t *testing.T, st *store.Store, kek *KEK) {
			st.PutCAFile(ctx, store.CAFile{Name: KeyFile, KEKID: kek.ID()})
		}, ErrSealBroken},
		{"unknown version", func(t *testing.T, st *store.Store, kek *KEK) {
			f, _ := st.CAFile(ctx, KeyFile)
			f.Data[0] = 2
			st.PutCAFile(ctx, f)
		}, ErrSealBroken},
		{"another root's sealed key moved here", func(t *testing.T, st *store.Store, kek *KEK) {
			f, _ := st.CAFile(ctx, KeyFileOf(2))
			f.Name = KeyFile
			st.PutCAFile(ctx, f)
		}, ErrSealBroken},
		{"relabelled as another KEK's", func(t *testing.T, st *store.Store, kek *KEK) {
			f, _ := st.CAFile(ctx, KeyFile)
			f.KEKID = "kek-0000000000000000"
			st.PutCAFile(ctx, f)
		}, ErrWrongKEK},
		{"key in the clear", func(t *testing.T, st *store.Store, kek *KEK) {
			plain, _ := InStore(st, kek).ReadFile(ctx, KeyFile)
			st.PutCAFile(ctx, store.CAFile{Name: KeyFile, Data: plain})
		}, ErrUnsealed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachStoreEngine(t, func(t *testing.T, e storeEngine) {
				st := openStore(t, e.dsn(t))
				kek := testKEK(t)
				s := InStore(st, kek)
				if _, _, err := LoadOrCreate(ctx, s, "tether.internal", t0); err != nil {
					t.Fatal(err)
				}
				if _, err := Rotate(ctx, s, t0, false); err != nil {
					t.Fatal(err)
				}
				tc.tamper(t, st, kek)
				_, err := Load(ctx, s)
				if !errors.Is(err, tc.want) {
					t.Fatalf("Load = %v, want %v", err, tc.want)
				}
				if _, created, err := LoadOrCreate(ctx, s, "tether.internal", t0); err == nil || created {
					t.Fatalf("LoadOrCreate over a tampered CA: created %v, %v", created, err)
				}
			})
		})
	}
	t.Run("certificate sealed", func(t *testing.T) {
		st := openStore(t, sqliteDSN(t))
		s := InStore(st, testKEK(t))
		if _, _, err := LoadOrCreate(ctx, s, "tether.internal", t0); err != nil {
			t.Fatal(err)
		}
		f, _ := st.CAFile(ctx, CertFile)
		f.KEKID = "kek-0000000000000000"
		st.PutCAFile(ctx, f)
		if _, err := Load(ctx, s); err == nil || !strings.Contains(err.Error(), "only keys are") {
			t.Fatalf("Load with a sealed certificate: %v", err)
		}
	})
}

func TestKEK(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := NewKEK(make([]byte, n)); !errors.Is(err, ErrKEKSize) {
			t.Errorf("NewKEK of %d bytes: %v, want ErrKEKSize", n, err)
		}
	}
	key := make([]byte, KEKSize)
	rand.Read(key)
	a, _ := NewKEK(key)
	b, _ := NewKEK(bytes.Clone(key))
	other := testKEK(t)
	if a.ID() != b.ID() || a.ID() == other.ID() || !strings.HasPrefix(a.ID(), "kek-") || len(a.ID()) != len("kek-")+16 {
		t.Fatalf("IDs: %s, %s, other %s", a.ID(), b.ID(), other.ID())
	}
	plain := []byte("-----BEGIN PRIVATE KEY-----")
	sealed := a.seal(KeyFile, plain)
	if again := a.seal(KeyFile, plain); bytes.Equal(sealed, again) {
		t.Fatal("two seals of the same key are equal: the nonce is not random")
	}
	if got, err := b.open(KeyFile, sealed); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open with the same key: %q, %v", got, err)
	}
	if _, err := other.open(KeyFile, sealed); !errors.Is(err, ErrSealBroken) {
		t.Fatalf("open with another key: %v", err)
	}
	if _, err := a.open(KeyFileOf(2), sealed); !errors.Is(err, ErrSealBroken) {
		t.Fatalf("open under another name: %v", err)
	}
}

// FuzzOpenSealed: a sealed key read from the store is hostile input:
// opening never panics, opens nothing it did not seal, and what seal makes
// opens to what was sealed.
func FuzzOpenSealed(f *testing.F) {
	kek, err := NewKEK(bytes.Repeat([]byte{7}, KEKSize))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(KeyFile, kek.seal(KeyFile, []byte("key")), []byte("key"))
	f.Add(KeyFile, []byte{}, []byte{})
	f.Add(KeyFile, []byte{1}, []byte("x"))
	f.Add("ca-2.key", bytes.Repeat([]byte{1}, 29), []byte{0})
	f.Fuzz(func(t *testing.T, name string, sealed, plain []byte) {
		if got, err := kek.open(name, sealed); err == nil {
			// Only a genuine seal opens: GCM's tag was made by kek
			// over this name.
			if again, err := kek.open(name, sealed); err != nil || !bytes.Equal(got, again) {
				t.Fatalf("opened once to %q, then %q, %v", got, again, err)
			}
		} else if !errors.Is(err, ErrSealBroken) {
			t.Fatalf("open: %v, want ErrSealBroken", err)
		}
		got, err := kek.open(name, kek.seal(name, plain))
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("seal then open of %q: %q, %v", plain, got, err)
		}
	})
}
