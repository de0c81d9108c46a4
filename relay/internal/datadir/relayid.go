package datadir

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/atomicfile"
)

// relayIDFile keeps the relay's id in its cluster across restarts.
const relayIDFile = "relay-id"

// RelayID returns the relay's id in its cluster: explicit when given (and
// then kept), else the one kept in the data directory, else a new one made
// from the host name and a random suffix, kept for the next start. Two
// relays must never share an id: each keeps its own data directory.
func (d *Dir) RelayID(explicit string) (string, error) {
	if explicit != "" {
		if err := identity.ValidateName("relay id", explicit); err != nil {
			return "", err
		}
		return explicit, d.saveRelayID(explicit)
	}
	raw, err := os.ReadFile(d.File(relayIDFile))
	switch {
	case err == nil:
		id, err := parseRelayID(raw)
		if err != nil {
			return "", fmt.Errorf("relay id file %s: %w; give the relay its id with --relay-id (the one it had in its cluster: another makes it a new relay), or remove the file for a new id", d.File(relayIDFile), err)
		}
		return id, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", err
	}
	id := newRelayID()
	return id, d.saveRelayID(id)
}

// parseRelayID reads the content of relay-id: the id on one line, ended
// by a newline, as saveRelayID writes it. A file cut short (a write torn
// by a crash: "vm-5f" of "vm-5f3a2b\n") lacks the newline, and is refused
// rather than taken for another relay's id.
func parseRelayID(raw []byte) (string, error) {
	s := string(raw)
	if !strings.HasSuffix(s, "\n") {
		return "", fmt.Errorf("%q is cut short: it does not end with a newline", s)
	}
	id := strings.TrimSpace(s)
	if strings.ContainsAny(id, "\r\n") {
		return "", fmt.Errorf("%q holds more than one line", s)
	}
	if err := identity.ValidateName("relay id", id); err != nil {
		return "", err
	}
	return id, nil
}

func (d *Dir) saveRelayID(id string) error {
	if raw, err := os.ReadFile(d.File(relayIDFile)); err == nil {
		if kept, err := parseRelayID(raw); err == nil && kept == id {
			return nil
		}
	}
	return atomicfile.Write(d.File(relayIDFile), []byte(id+"\n"), 0o600)
}

// newRelayID makes an id from the host name (as a DNS label) and six
// random hex digits.
func newRelayID() string {
	host, _ := os.Hostname()
	host, _, _ = strings.Cut(strings.ToLower(host), ".")
	var b strings.Builder
	for _, c := range host {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			b.WriteRune(c)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
	}
	name := b.String()
	if len(name) > 48 {
		name = name[:48]
	}
	name = strings.Trim(name, "-")
	if name == "" {
		name = "relay"
	}
	var r [3]byte
	rand.Read(r[:])
	return name + "-" + hex.EncodeToString(r[:])
}
