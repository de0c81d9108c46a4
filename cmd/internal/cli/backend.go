package cli

import (
	"fmt"
	"io"
	"time"
)

// Help texts of the backend commands, the same in tether-relay and
// tetherctl.
const (
	GrantHelp = `A grant is tenant/service, a tenant alone (all its services), or a
pattern with "*" (acme/postgres, globex, */metrics).`

	BackendCertsHelp = `The TLS door accepts a backend's certificate only while the relay has it
on record and it has not expired; an expired one is forgotten at the
backend's next certificate. A backend added before the relay recorded
backend certificates (store schema version 13 and older) also accepts the
certificates issued to it since it was added that are not on record: the
last line says whether it still does.`

	BackendRevokeHelp = `Revoke a client certificate of a backend by its serial (hexadecimal, as
backend certificate printed it and backend certificates lists it, in
either case): the TLS door of every relay refuses it within 2 s;
connections open with it continue. The backend's API key and its other
certificates keep working.

With --unrecorded instead of a SERIAL, refuse the backend's certificates
that the relay has no record of: those issued before it recorded backend
certificates (store schema version 13 and older), which a backend added
before then still accepts. They cannot be listed or revoked one by one.
Issue the backend new certificates first.`
)

// BackendCerts is a backend's client certificates as the relay recorded
// them: the admin API's answer to GET backends/{name}/certificates.
type BackendCerts struct {
	Backend           string        `json:"backend"`
	Certificates      []BackendCert `json:"certificates"`
	AcceptsUnrecorded bool          `json:"accepts_unrecorded"`
}

// BackendCert is one of BackendCerts.
type BackendCert struct {
	Serial    string    `json:"serial"`
	CreatedAt time.Time `json:"created_at"`
	NotAfter  time.Time `json:"not_after"`
	Expired   bool      `json:"expired"`
}

// Write prints l as a table, then whether the backend also accepts
// certificates that are not on record.
func (l BackendCerts) Write(w io.Writer) error {
	now := time.Now()
	rows := make([][]string, len(l.Certificates))
	for i, c := range l.Certificates {
		state := "valid"
		if c.Expired {
			state = "expired"
		}
		rows[i] = []string{c.Serial, Since(c.CreatedAt, now), When(c.NotAfter, now), state}
	}
	if err := WriteTable(w, []string{"SERIAL", "ISSUED", "EXPIRES", "STATE"}, rows); err != nil {
		return err
	}
	if l.AcceptsUnrecorded {
		_, err := fmt.Fprintf(w, "backend %s also accepts the certificates issued to it before the relay recorded them (not listed); refuse them with: backend revoke-certificate %s --unrecorded\n", l.Backend, l.Backend)
		return err
	}
	_, err := fmt.Fprintf(w, "backend %s accepts only the certificates listed, until they expire\n", l.Backend)
	return err
}
