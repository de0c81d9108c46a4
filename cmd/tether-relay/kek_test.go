package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

const pgStore = "postgres://tether:secret@127.0.0.1:1/tether"

// TestCAKEK: the CA's key-encryption key comes from a file or from
// TETHER_CA_KEK, not both; one that is missing where it is needed, or
// malformed, is refused naming both ways of giving it.
func TestCAKEK(t *testing.T) {
	key := bytes.Repeat([]byte{0xab}, kekSize)
	good := base64.StdEncoding.EncodeToString(key)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	goodFile := write("good", good+"\n") // as openssl rand -base64 32 writes it
	for _, tc := range []struct {
		name, file, env, store string
		want                   []byte
		errs                   []string // each in the error
	}{
		{"file", goodFile, "", pgStore, key, nil},
		{"environment", "", "  " + good + "\n", pgStore, key, nil},
		{"none, SQLite", "", "", "", nil, nil},
		{"given, SQLite", goodFile, "", "", key, nil},
		{"none, PostgreSQL", "", "", pgStore, nil, []string{"--ca-kek-file", "TETHER_CA_KEK", "openssl rand -base64 32"}},
		{"both", goodFile, good, pgStore, nil, []string{"--ca-kek-file", "TETHER_CA_KEK", "twice"}},
		{"short", write("short", base64.StdEncoding.EncodeToString(key[:16])), "", pgStore, nil,
			[]string{"malformed (16 bytes)", "--ca-kek-file", "TETHER_CA_KEK", "32 random bytes"}},
		{"not base64", "", "not base64!", pgStore, nil, []string{"TETHER_CA_KEK is malformed (not base64)", "--ca-kek-file"}},
		{"missing file", filepath.Join(dir, "nope"), "", pgStore, nil, []string{"CA key-encryption key", "nope"}},
		{"malformed, even for SQLite", "", "abc", "", nil, []string{"malformed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &globals{env: func(k string) string {
				if k == "TETHER_CA_KEK" {
					return tc.env
				}
				return ""
			}}
			got, err := g.caKEK(tc.file, tc.store)
			if len(tc.errs) == 0 {
				if err != nil || !bytes.Equal(got, tc.want) {
					t.Fatalf("got %x, %v; want %x", got, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %x, want an error", got)
			}
			for _, want := range tc.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("%v\nlacks %q", err, want)
				}
			}
			if strings.Contains(err.Error(), good) {
				t.Error("the error shows the key")
			}
		})
	}
}

// TestServeOnPostgresNeedsKEK: serve and admin commands on a PostgreSQL
// store without the key-encryption key refuse before connecting, saying
// how to give it; a store that is not PostgreSQL is refused as a setting.
func TestServeOnPostgresNeedsKEK(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--store", pgStore, "--data-dir", t.TempDir()},
		{"ca", "status", "--store", pgStore, "--data-dir", t.TempDir()},
	} {
		var stderr bytes.Buffer
		root := newRoot(cli.BuildInfo{Program: prog}, io.Discard, &stderr)
		code := cli.Execute(context.Background(), root, args, &stderr)
		if code != cli.ExitFailure || !strings.Contains(stderr.String(), "--ca-kek-file FILE or TETHER_CA_KEK") || strings.Contains(stderr.String(), "secret") {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr.String())
		}
	}
	var stderr bytes.Buffer
	root := newRoot(cli.BuildInfo{Program: prog}, io.Discard, &stderr)
	if code := cli.Execute(context.Background(), root, []string{"serve", "--store", "/var/lib/x.db", "--data-dir", t.TempDir()}, &stderr); code != cli.ExitUsage ||
		!strings.Contains(stderr.String(), `--store "/var/lib/x.db": want a postgres:// URL`) {
		t.Errorf("serve --store FILE: exit %d, stderr %q", code, stderr.String())
	}
}

func TestRedactStore(t *testing.T) {
	for in, want := range map[string]string{
		pgStore:                               "postgres://tether:xxxxx@127.0.0.1:1/tether",
		"postgres://tether@db:5432/t":         "postgres://tether@db:5432/t",
		"":                                    "",
		"postgresql://u:p@h/d?sslmode=verify": "postgresql://u:xxxxx@h/d?sslmode=verify",
	} {
		if got := redactStore(in); got != want {
			t.Errorf("redactStore(%q) = %q, want %q", in, got, want)
		}
	}
}
