package relay

import (
	"strings"
	"testing"
	"time"
)

// TestConfigRefusesNegativeBounds: a negative bound is a mistake to report,
// not a value to run with.
func TestConfigRefusesNegativeBounds(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*Config)
		want string
	}{
		{"handshakes", func(c *Config) { c.MaxHandshakes = -1 }, "max handshakes must be positive (got -1)"},
		{"QUIC handshakes", func(c *Config) { c.MaxQUICTLSHandshakes = -3 }, "max QUIC handshakes must be positive (got -3)"},
		{"handshakes per address", func(c *Config) { c.MaxHandshakesPerAddress = -1 }, "max handshakes per address must be positive (got -1)"},
		{"handshakes per network", func(c *Config) { c.MaxHandshakesPerNetwork = -2 }, "max handshakes per network must be positive (got -2)"},
		{"front-door pending per address", func(c *Config) { c.MaxFrontPendingPerAddress = -1 }, "max front-door pending per address must be positive (got -1)"},
		{"front-door pending per network", func(c *Config) { c.MaxFrontPendingPerNetwork = -1 }, "max front-door pending per network must be positive (got -1)"},
		{"audit traffic retention", func(c *Config) { c.AuditTrafficRetention = -time.Hour }, "audit traffic retention -1h0m0s: want 0 (keep for ever) or at least 1h"},
		{"audit traffic retention too short", func(c *Config) { c.AuditTrafficRetention = time.Minute }, "audit traffic retention 1m0s: want 0 (keep for ever) or at least 1h"},
		{"audit file max size", func(c *Config) { c.AuditFileMaxSize = 4096 }, "audit file max size 4096 bytes: want 0 (never rotate) or at least 1048576 (1 MiB)"},
		{"audit file max files", func(c *Config) { c.AuditFileMaxSize, c.AuditFileMaxFiles = 1<<30, -1 }, "audit file max files must not be negative (got -1)"},
		{"audit file max files alone", func(c *Config) { c.AuditFileMaxFiles = 10 }, "audit file max files without a max size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{DataDir: t.TempDir()}
			tc.set(&c)
			c.setDefaults()
			err := c.validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("validate: got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	c := Config{DataDir: t.TempDir(), MaxHandshakes: 4}
	c.setDefaults()
	if err := c.validate(); err != nil {
		t.Fatalf("validate of a good config: %v", err)
	}
	if c.MaxQUICTLSHandshakes != 32 {
		t.Fatalf("default QUIC handshakes: got %d, want 8 × 4", c.MaxQUICTLSHandshakes)
	}
}

// TestConfigDebugListenLoopbackOnly: the debug listener serves profiles and
// every tenant's live counts without authentication, so it listens on a
// loopback address only, as the agent's does.
func TestConfigDebugListenLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:6060": true, "[::1]:6060": true, "localhost:0": true, Off: true,
		":6060": false, "0.0.0.0:6060": false, "10.0.0.5:6060": false, "[::]:6060": false, "relay.example:6060": false,
	} {
		c := Config{DataDir: t.TempDir(), DebugListen: addr}
		c.setDefaults()
		err := c.validate()
		if ok && err != nil {
			t.Errorf("debug listen %q: %v", addr, err)
		}
		if !ok && (err == nil || !strings.Contains(err.Error(), "not a loopback address")) {
			t.Errorf("debug listen %q: %v; want it refused as not loopback", addr, err)
		}
	}
}
