package agent

import (
	"strings"
	"testing"
)

func TestServiceBackends(t *testing.T) {
	c, err := ParseConfig([]byte(`
state_dir: /x
services:
  db:
    address: 10.0.0.5:5432
    backends: [billing, reports-*]
  api: 10.0.0.6:80
`))
	if err != nil {
		t.Fatal(err)
	}
	db, api := c.Services["db"], c.Services["api"]
	for backend, want := range map[string]bool{
		"backend:billing":     true,
		"backend:reports-eu":  true,
		"backend:billing2":    false,
		"backend:analytics":   false,
		"billing":             false, // not a backend identity
		"":                    false,
		"agent:billing":       false,
		"backend:billing/../": false,
	} {
		if got := db.allows(backend); got != want {
			t.Errorf("db.allows(%q) = %v, want %v", backend, got, want)
		}
	}
	if !api.allows("backend:anyone") {
		t.Error("a service without a backends list refused a backend")
	}
}

func TestServiceBackendsRefused(t *testing.T) {
	for cfg, want := range map[string]string{
		"state_dir: /x\nservices: {db: {address: a:1, backends: ['*']}}\n":        "leave backends out",
		"state_dir: /x\nservices: {db: {address: a:1, backends: [Billing]}}\n":    "services.db.backends[0]",
		"state_dir: /x\nservices: {db: {address: a:1, backends: ['a**']}}\n":      "single *",
		"state_dir: /x\nservices: {db: {address: a:1, backends: billing}}\n":      "parse config",
		"state_dir: /x\nservices: {db: {address: a:1, backends: ['bad/name']}}\n": "services.db.backends[0]",
	} {
		_, err := ParseConfig([]byte(cfg))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error containing %q", cfg, err, want)
		}
	}
}
