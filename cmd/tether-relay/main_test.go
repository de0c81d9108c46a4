package main

import (
	"io"
	"slices"
	"testing"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

// tether-relay runs every command of the shared vocabulary (agent drain
// through the store's change feed, which running relays follow).
func TestVocabulary(t *testing.T) {
	root := newRoot(cli.BuildInfo{Program: prog}, io.Discard, io.Discard)
	leaves := cli.Leaves(root)
	for _, path := range cli.Vocabulary() {
		c, ok := leaves[path]
		if !ok {
			t.Errorf("tether-relay lacks %q", path)
			continue
		}
		_, unavailable := c.Annotations[cli.Unavailable]
		if unavailable {
			t.Errorf("%q: unavailable %v", path, unavailable)
		}
		delete(leaves, path)
	}
	var extra []string
	for path := range leaves {
		extra = append(extra, path)
	}
	slices.Sort(extra)
	if want := []string{"demo", "init", "serve", "version"}; !slices.Equal(extra, want) {
		t.Errorf("commands outside the vocabulary: %v, want %v", extra, want)
	}
}
