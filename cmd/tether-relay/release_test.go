package main

import (
	"slices"
	"testing"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay/admin"
)

// release status, in both binaries, names the update states and the page
// size the relay has.
func TestReleaseStatusMatchesTheRelay(t *testing.T) {
	if !slices.Equal(cli.UpdateStates, admin.UpdateStates) {
		t.Errorf("cli.UpdateStates = %v, the relay's %v", cli.UpdateStates, admin.UpdateStates)
	}
	if cli.DefaultUpdatePage != admin.DefaultUpdatePage {
		t.Errorf("cli.DefaultUpdatePage = %d, the relay's %d", cli.DefaultUpdatePage, admin.DefaultUpdatePage)
	}
}
