package cli

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// ReleaseStatusHelp is the help of release status, the same in
// tether-relay and tetherctl.
const ReleaseStatusHelp = `Show the rollouts, the agents' update states of the version and tenant
given counted by state, and a page (--limit) of those states, newest first
by their last change: after a page with more to follow, the command that
lists the next (--cursor) is printed on stderr. An agent whose state
changes while you page moves to the front, where a new first page shows it.`

// UpdateStates are the states of an agent's update, in the order of a
// rollout: the relay's admin.UpdateStates.
var UpdateStates = []string{"offered", "downloading", "downloaded", "applied", "succeeded", "refused", "failed", "rolled_back"}

// DefaultUpdatePage is how many agents' update states release status
// lists unless told (the relay's admin.DefaultUpdatePage).
const DefaultUpdatePage = 200

// ReleaseStatusFlags are release status's flags, in both binaries.
type ReleaseStatusFlags struct {
	Version, Tenant, State, Cursor string
	Limit                          int
}

// Add defines the flags in fs.
func (s *ReleaseStatusFlags) Add(fs *pflag.FlagSet) {
	fs.StringVar(&s.Version, "version", "", "only this version")
	fs.StringVar(&s.Tenant, "tenant", "", "only this tenant's agents")
	fs.StringVar(&s.State, "state", "", "only agents in this state: "+strings.Join(UpdateStates, ", ")+" (the counts stay those of every state)")
	fs.IntVar(&s.Limit, "limit", DefaultUpdatePage, "agents per page (at most 1000)")
	fs.StringVar(&s.Cursor, "cursor", "", "the next page: the cursor printed after a page with more to follow")
}

// Query is the admin API's query (GET rollouts) of the flags.
func (s *ReleaseStatusFlags) Query() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"version": s.Version, "tenant": s.Tenant, "state": s.State, "cursor": s.Cursor} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if s.Limit != 0 {
		q.Set("limit", strconv.Itoa(s.Limit))
	}
	return q
}

// WriteCounts writes the counts by state of the version and tenant
// selected as one row: the states of UpdateStates, then any other, then
// their total.
func (s *ReleaseStatusFlags) WriteCounts(w io.Writer, counts map[string]int) error {
	header, row := []string{"VERSION", "TENANT"}, []string{cmp.Or(s.Version, "all"), cmp.Or(s.Tenant, "all")}
	states := slices.Clone(UpdateStates)
	for _, st := range slices.Sorted(maps.Keys(counts)) {
		if !slices.Contains(states, st) {
			states = append(states, st)
		}
	}
	total := 0
	for _, st := range states {
		header, row = append(header, strings.ToUpper(st)), append(row, strconv.Itoa(counts[st]))
		total += counts[st]
	}
	return WriteTable(w, append(header, "TOTAL"), [][]string{append(row, strconv.Itoa(total))})
}

// More tells how to list the page after the one shown (of shown agents'
// states): prog's release status with the same filters and next as its
// cursor; on the first page, with how many agents' states the filters
// select.
func (s *ReleaseStatusFlags) More(prog, next string, shown int, counts map[string]int) string {
	args := []string{prog, "release", "status"}
	for _, f := range [][2]string{{"version", s.Version}, {"tenant", s.Tenant}, {"state", s.State}} {
		if f[1] != "" {
			args = append(args, "--"+f[0], f[1])
		}
	}
	if s.Limit != 0 && s.Limit != DefaultUpdatePage {
		args = append(args, "--limit", strconv.Itoa(s.Limit))
	}
	cmd := strings.Join(append(args, "--cursor", next), " ")
	if s.Cursor != "" {
		return "more agents follow; the next page: " + cmd
	}
	n := 0
	for st, c := range counts {
		if s.State == "" || st == s.State {
			n += c
		}
	}
	return fmt.Sprintf("the %d most recent of %d agents' update states are shown; the next page: %s", shown, n, cmd)
}

// ReleaseRemoveHelp is release remove's, in both binaries.
const ReleaseRemoveHelp = `Remove every release of VERSION (each platform and channel): its rows in the
store, each binary no other release refers to, the agents' update states
of the version (each agent's newest stays: where it stands), and the
relay's copy of its files in the data directory. The other relays of a
cluster remove their copies when the change reaches them (within
--change-poll), or at their next start. The audit trail keeps every
record of the release (release.publish, release.rollout, update.*), and
a release.remove record is added.

It is refused while the active rollout offers VERSION (start a rollout of
another version, which supersedes it), and while agents were offered it or
were downloading it in the last 15 minutes, unless --force: their download
then fails, and each agent, which checks every file before it uses
anything, keeps the binary it runs. An agent asking for it afterwards gets
nothing: the relay no longer has it.`

// RemovedRelease says what release remove removed.
func RemovedRelease(version string, platforms, blobs int, bytes, states int64) string {
	return fmt.Sprintf("removed release %s (%d platforms and channels): %d binaries (%s) deleted from the store, %d agents' update states pruned; every relay removes its copy of the files",
		version, platforms, blobs, Bytes(uint64(max(bytes, 0))), states)
}
