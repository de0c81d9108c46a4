package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
)

// kekSize is the size of the CA's key-encryption key: 32 random bytes.
const kekSize = 32

// kekHelp says how to give and make a key-encryption key.
const kekHelp = "give every relay of the cluster the same one with --ca-kek-file FILE or TETHER_CA_KEK: " +
	"32 random bytes in base64, as openssl rand -base64 32 makes"

// isPostgres reports whether store is a PostgreSQL store's address.
func isPostgres(store string) bool {
	return strings.HasPrefix(store, "postgres://") || strings.HasPrefix(store, "postgresql://")
}

// checkStore checks the value of --store: empty (SQLite in the data
// directory) or a PostgreSQL URL.
func checkStore(store string) error {
	if store != "" && !isPostgres(store) {
		return errors.New("want a postgres:// URL (leave it out for SQLite in the data directory)")
	}
	return nil
}

// redactStore is store without its password, for logs.
func redactStore(store string) string {
	u, err := url.Parse(store)
	if err != nil || u.User == nil {
		return store
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// maxKEKFile bounds what is read of a key-encryption key file.
const maxKEKFile = 4 << 10

// caKEK is the CA's key-encryption key, from file (--ca-kek-file,
// TETHER_CA_KEK_FILE or the config file's ca_kek_file, as resolved) or
// from the environment variable TETHER_CA_KEK: one or the other, not both.
// A relay on PostgreSQL needs one; on SQLite there is none to use, and a
// given one is only checked.
func (g *globals) caKEK(file, store string) ([]byte, error) {
	env := strings.TrimSpace(g.env("TETHER_CA_KEK"))
	var text, from string
	switch {
	case file != "" && env != "":
		return nil, errors.New("the CA key-encryption key is given twice, by --ca-kek-file (or ca_kek_file, TETHER_CA_KEK_FILE) and by TETHER_CA_KEK: give one")
	case file != "":
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("CA key-encryption key: %w", err)
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxKEKFile))
		if err != nil {
			return nil, fmt.Errorf("CA key-encryption key: %w", err)
		}
		text, from = string(b), "the file "+file
	case env != "":
		text, from = env, "TETHER_CA_KEK"
	case isPostgres(store):
		return nil, errors.New("a relay on PostgreSQL (--store) keeps the CA in the store, its private keys sealed with a key-encryption key, " +
			"and none was given: " + kekHelp)
	default:
		return nil, nil
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(text))
	if err != nil || len(key) != kekSize {
		got := "not base64"
		if err == nil {
			got = fmt.Sprintf("%d bytes", len(key))
		}
		return nil, fmt.Errorf("the CA key-encryption key in %s is malformed (%s): %s", from, got, kekHelp)
	}
	return key, nil
}
