package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStateErrorsSayWhatToDo: a state directory whose identity does not
// hold together (a key that is not the certificate's, a file cut short,
// an agent.json of another agent: what a torn write or a hand-copied file
// leaves) is refused with an error that names the file at fault and the
// way out: enrolling again with --force and a new join token.
func TestStateErrorsSayWhatToDo(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   []string // in the error, besides the way out; DIR is the state directory
	}{
		{"key of another certificate", func(t *testing.T, dir string) {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			kder, _ := x509.MarshalPKCS8PrivateKey(key)
			writeTestFile(t, filepath.Join(dir, keyFile), pemBlock("PRIVATE KEY", kder))
		}, []string{"DIR/agent.key", "DIR/agent.crt", "does not go with"}},
		{"certificate cut short", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(filepath.Join(dir, certFile))
			writeTestFile(t, filepath.Join(dir, certFile), b[:len(b)/2])
		}, []string{"DIR/agent.crt"}},
		{"key cut short", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(filepath.Join(dir, keyFile))
			writeTestFile(t, filepath.Join(dir, keyFile), b[:len(b)/2])
		}, []string{"DIR/agent.key"}},
		{"agent.json of another agent", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(filepath.Join(dir, identityFile))
			writeTestFile(t, filepath.Join(dir, identityFile), []byte(strings.Replace(string(b), `"a1"`, `"a2"`, 1)))
		}, []string{"DIR/agent.json", "DIR/agent.crt", `agent "a2"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := enrolled(t, root, root).state.Dir
			tc.damage(t, dir)
			_, err := LoadState(dir)
			if err == nil {
				t.Fatal("LoadState: no error")
			}
			t.Log(err)
			for _, w := range append(tc.want, "enrol the agent again with a new join token", "tether-agent enroll --force --state-dir "+dir) {
				if w = strings.ReplaceAll(w, "DIR/", dir+string(filepath.Separator)); !strings.Contains(err.Error(), w) {
					t.Errorf("LoadState: %v\nwant it to say %q", err, w)
				}
			}
		})
	}
}

func writeTestFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRenewalRemovesStaleTemps: each write of the state directory cut
// short by a crash or power loss (between the temporary file's creation
// and its rename) leaves a temporary file behind, a copy of the agent's
// private key for agent.key. A later write of the same file (the next
// renewal) removes those older than staleTemp; a younger one, which may
// be another process's write in progress, stays.
func TestRenewalRemovesStaleTemps(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	s := enrolled(t, root, root).state
	keyPEM, err := os.ReadFile(filepath.Join(s.Dir, keyFile))
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := os.ReadFile(filepath.Join(s.Dir, certFile))
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-staleTemp - time.Minute)
	leftover := func(target string) string {
		f, err := os.CreateTemp(s.Dir, "."+target+".tmp*")
		if err != nil {
			t.Fatal(err)
		}
		f.Write(keyPEM)
		f.Close()
		return f.Name()
	}
	for range 10 { // ten renewals cut short
		for _, target := range []string{keyFile, certFile + nextSuffix} {
			if err := os.Chtimes(leftover(target), old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	young := leftover(keyFile)
	if err := s.replaceKeyPair(keyPEM, certPEM, nil); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(s.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var temps []string
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			temps = append(temps, e.Name())
		}
	}
	if len(temps) != 1 || temps[0] != filepath.Base(young) {
		t.Fatalf("temporary files left after a renewal: %v, want only %s (younger than %v)", temps, filepath.Base(young), staleTemp)
	}
	if _, err := LoadState(s.Dir); err != nil {
		t.Fatalf("state after the renewal: %v", err)
	}
}
