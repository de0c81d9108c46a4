package release

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"
)

func testKey(t testing.TB) (priv []byte, keys Keys) {
	t.Helper()
	priv, pub, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keys, err = ParseKeys([]string{string(pub)})
	if err != nil {
		t.Fatal(err)
	}
	return priv, keys
}

func manifestFor(bin []byte, version string, expires time.Time) Manifest {
	sum := sha256.Sum256(bin)
	return Manifest{Version: version, OS: "linux", Arch: "amd64", Channel: "stable", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(bin)), Expires: expires}
}

func TestSignVerify(t *testing.T) {
	privText, keys := testKey(t)
	priv, err := ParsePrivateKey(privText)
	if err != nil {
		t.Fatal(err)
	}
	otherText, _ := testKey(t)
	other, _ := ParsePrivateKey(otherText)
	bin := []byte("binary bytes")
	exp := time.Now().Add(time.Hour)
	s, err := Sign(priv, manifestFor(bin, "1.2.3", exp), bin)
	if err != nil {
		t.Fatal(err)
	}
	m, k, err := keys.Verify(s.Manifest, s.ManifestSignature)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if m.Version != "1.2.3" || k.ID() != keys[0].ID() {
		t.Fatalf("got %+v key %x", m, k.ID())
	}
	wrong, _ := Sign(other, manifestFor(bin, "1.2.3", exp), bin)
	tampered := bytes.Replace(s.Manifest, []byte("1.2.3"), []byte("1.2.4"), 1)
	for _, tc := range []struct {
		name      string
		keys      Keys
		man, sig  []byte
		wantReson string
	}{
		{"unsigned", keys, s.Manifest, nil, ReasonSignature},
		{"garbage signature", keys, s.Manifest, []byte("untrusted comment: x\nAAAA\ntrusted comment: y\nBBBB"), ReasonSignature},
		{"wrong key", keys, wrong.Manifest, wrong.ManifestSignature, ReasonKey},
		{"tampered manifest", keys, tampered, s.ManifestSignature, ReasonSignature},
		{"binary signature for the manifest", keys, s.Manifest, s.BinarySignature, ReasonSignature},
		{"no trusted keys", nil, s.Manifest, s.ManifestSignature, ReasonNoKeys},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := tc.keys.Verify(tc.man, tc.sig)
			if got := ReasonOf(err); got != tc.wantReson {
				t.Fatalf("got reason %q (%v), want %q", got, err, tc.wantReson)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	now := time.Now()
	base := manifestFor([]byte("x"), "2.0.0", now.Add(time.Hour))
	target := Target{OS: "linux", Arch: "amd64", Channel: "stable", Version: "1.0.0", Now: now, Failed: map[string]bool{"3.0.0": true}}
	for _, tc := range []struct {
		name   string
		edit   func(*Manifest)
		reason string
	}{
		{"ok", func(*Manifest) {}, ""},
		{"other os", func(m *Manifest) { m.OS = "windows" }, ReasonPlatform},
		{"other arch", func(m *Manifest) { m.Arch = "arm64" }, ReasonPlatform},
		{"other channel", func(m *Manifest) { m.Channel = "beta" }, ReasonChannel},
		{"expired", func(m *Manifest) { m.Expires = now.Add(-time.Second) }, ReasonExpired},
		{"same version", func(m *Manifest) { m.Version = "1.0.0" }, ReasonNotNewer},
		{"older version", func(m *Manifest) { m.Version = "0.9.9" }, ReasonNotNewer},
		{"pre-release of the same", func(m *Manifest) { m.Version = "1.0.0-rc.1" }, ReasonNotNewer},
		{"failed before", func(m *Manifest) { m.Version = "3.0.0" }, ReasonFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := base
			tc.edit(&m)
			if got := ReasonOf(target.Check(m)); got != tc.reason {
				t.Fatalf("got reason %q, want %q", got, tc.reason)
			}
		})
	}
}

func TestParseManifestStrict(t *testing.T) {
	good, err := (&Manifest{Version: "1.0.0", OS: "linux", Arch: "amd64", Channel: "stable", SHA256: "00" + string(bytes.Repeat([]byte("ab"), 31)), Size: 1, Expires: time.Unix(2e9, 0)}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseManifest(good); err != nil {
		t.Fatalf("good manifest: %v", err)
	}
	for name, in := range map[string]string{
		"unknown field":  `{"version":"1.0.0","os":"linux","arch":"amd64","channel":"stable","sha256":"` + string(bytes.Repeat([]byte("a"), 64)) + `","size":1,"expires":"2030-01-01T00:00:00Z","x":1}`,
		"trailing data":  string(good) + "{}",
		"v prefix":       `{"version":"v1.0.0","os":"linux","arch":"amd64","channel":"stable","sha256":"` + string(bytes.Repeat([]byte("a"), 64)) + `","size":1,"expires":"2030-01-01T00:00:00Z"}`,
		"upper-case hex": `{"version":"1.0.0","os":"linux","arch":"amd64","channel":"stable","sha256":"` + string(bytes.Repeat([]byte("A"), 64)) + `","size":1,"expires":"2030-01-01T00:00:00Z"}`,
		"zero size":      `{"version":"1.0.0","os":"linux","arch":"amd64","channel":"stable","sha256":"` + string(bytes.Repeat([]byte("a"), 64)) + `","size":0,"expires":"2030-01-01T00:00:00Z"}`,
		"no expiry":      `{"version":"1.0.0","os":"linux","arch":"amd64","channel":"stable","sha256":"` + string(bytes.Repeat([]byte("a"), 64)) + `","size":1}`,
		"path in os":     `{"version":"1.0.0","os":"../x","arch":"amd64","channel":"stable","sha256":"` + string(bytes.Repeat([]byte("a"), 64)) + `","size":1,"expires":"2030-01-01T00:00:00Z"}`,
	} {
		if _, err := ParseManifest([]byte(in)); err == nil {
			t.Errorf("%s: parsed, want an error", name)
		}
	}
}

// FuzzVerifyManifest feeds hostile manifests and signatures to the parser
// and the verifier: no panic, and nothing verifies unless the trusted key
// signed exactly those bytes.
func FuzzVerifyManifest(f *testing.F) {
	privText, keys := testKey(f)
	priv, _ := ParsePrivateKey(privText)
	bin := []byte("bin")
	s, err := Sign(priv, manifestFor(bin, "1.2.3", time.Unix(2e9, 0)), bin)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(s.Manifest, s.ManifestSignature)
	f.Add(s.Manifest, []byte{})
	f.Add([]byte(`{"version":"1.0.0"}`), s.ManifestSignature)
	f.Add(bytes.Repeat([]byte("{"), 100), []byte("untrusted comment: \n\ntrusted comment: \n"))
	f.Fuzz(func(t *testing.T, man, sig []byte) {
		if m, err := ParseManifest(man); err == nil {
			if err := m.Validate(); err != nil {
				t.Fatalf("parsed manifest does not validate: %v", err)
			}
		}
		m, _, err := keys.Verify(man, sig)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("verify error without a reason: %v", err)
			}
			return
		}
		if !bytes.Equal(man, s.Manifest) {
			t.Fatalf("verified a manifest the key never signed: %q (%+v)", man, m)
		}
	})
}
