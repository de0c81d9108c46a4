package relay

import (
	"go/build"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The relay's parts import one way (doc.go): this test holds the rules
// against the code, so that a shortcut between parts fails CI rather
// than growing into a tangle.
func TestImportRules(t *testing.T) {
	const mod = "github.com/tetherhq/tether/relay/"
	never := map[string][]string{
		"internal/route":     {"internal/session", "internal/peer", "internal/frontdoor", "internal/cluster"}, // routing sees carriers
		"internal/session":   {"internal/frontdoor", "internal/peer", "internal/enrol", "internal/update"},    // agents' side knows no front door
		"internal/frontdoor": {"internal/session", "internal/peer", "internal/cluster"},                       // front doors reach agents through routing
		"internal/peer":      {"internal/frontdoor", "internal/session"},                                      // a forwarded stream is neither re-authenticated nor forwarded again
		"internal/cluster":   {"internal/route", "internal/session", "internal/peer"},                         // membership knows nothing of streams
		"internal/store":     {"internal/"},                                                                   // the ground
	}
	lower := []string{"internal/policy", "internal/trust", "internal/audit", "internal/throttle", "internal/credential",
		"internal/datadir", "internal/metrics", "internal/socks5", "internal/ca", "internal/atomicfile", "internal/store", "internal/restore", "internal/streammem"}
	parts := []string{"internal/session", "internal/route", "internal/frontdoor", "internal/peer", "internal/cluster",
		"internal/enrol", "internal/update", "internal/console", "admin"}
	for _, l := range lower {
		never[l] = append(never[l], parts...)
	}
	dirs, err := filepath.Glob("internal/*")
	if err != nil {
		t.Fatal(err)
	}
	dirs = append(dirs, "admin", "client")
	for _, dir := range dirs {
		pkg, err := build.ImportDir(dir, 0)
		if err != nil {
			continue // not a package
		}
		for _, imp := range pkg.Imports {
			if imp == strings.TrimSuffix(mod, "/") {
				t.Errorf("%s imports the facade, %s: no part may", dir, imp)
				continue
			}
			rel, ok := strings.CutPrefix(imp, mod)
			if !ok {
				continue
			}
			if dir == "client" {
				t.Errorf("client imports %s: the backends' Dialer depends on protocol/ only", imp)
			}
			if slices.ContainsFunc(never[dir], func(p string) bool { return rel == p || (strings.HasSuffix(p, "/") && strings.HasPrefix(rel, p)) }) && rel != dir {
				t.Errorf("%s imports %s, which the relay's import rules forbid (see doc.go)", dir, rel)
			}
		}
	}
}
