package main

import (
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

// tetherctl takes every command of the shared vocabulary; those that need
// the relay's data directory (the CA, making operator credentials, backend
// certificates, release signing and publishing) are named but refused.
func TestVocabulary(t *testing.T) {
	root := newRoot(cli.BuildInfo{Program: prog}, io.Discard, io.Discard, func(string) string { return "" })
	leaves := cli.Leaves(root)
	onRelayHost := func(path string) bool {
		return strings.HasPrefix(path, "ca ") || strings.HasPrefix(path, "operator token ") || path == "operator certificate create" || path == "backend certificate" || path == "backup" ||
			slices.Contains([]string{"release keygen", "release sign", "release publish"}, path)
	}
	for _, path := range cli.Vocabulary() {
		c, ok := leaves[path]
		if !ok {
			t.Errorf("tetherctl lacks %q", path)
			continue
		}
		_, unavailable := c.Annotations[cli.Unavailable]
		if unavailable != onRelayHost(path) {
			t.Errorf("%q: unavailable %v", path, unavailable)
		}
		delete(leaves, path)
	}
	var extra []string
	for path := range leaves {
		extra = append(extra, path)
	}
	slices.Sort(extra)
	if want := []string{"forward", "version", "whoami"}; !slices.Equal(extra, want) {
		t.Errorf("commands outside the vocabulary: %v, want %v", extra, want)
	}
}
