// Package pgtest runs throwaway PostgreSQL servers for end-to-end tests.
//
// Start creates a fresh cluster with initdb in its own temporary directory,
// starts it with pg_ctl on a free port of 127.0.0.1 and stops and removes it
// when the test ends. The PostgreSQL server binaries must be installed:
// scripts/deps.sh installs them. A missing binary fails the test; it is never
// skipped.
//
// initdb and postgres refuse to run as root, so when the test runs as root
// the server runs as the "postgres" system user (created by Debian's package)
// or, failing that, as "nobody".
//
// The package is unix-only.
package pgtest
