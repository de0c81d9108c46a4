package relay

import (
	"strings"
	"testing"
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
