package protocol

// Self-update messages (types 13–15 and 17) and the stream that carries a
// release binary.
//
// The relay offers a release on the control stream (UpdateOffer). The agent
// verifies the signed manifest against the keys it trusts, its platform,
// channel, version and the expiry, and either refuses (UpdateStatus
// "refused") or asks for the binary (UpdateFetch). The relay then opens a
// stream to the agent whose header names UpdateService, with the offer's
// id as request id, and writes the binary after the agent's OK reply.
//
// The binary does not travel on the control stream: it is megabytes, and
// behind it the heartbeats would wait (a slow link would end the session);
// control messages are also capped at MaxMessageSize. Nor can the agent
// open a stream for it: the relay grants agents no stream credit beyond the
// control stream. A relay-opened stream has its own flow control and is
// cut off by the agent at the manifest's size and its time limit.
//
// A relay that cannot send the binary of an offer the agent asked for (the
// release was removed since it was offered) answers the UpdateFetch with
// UpdateCancel instead of opening the stream: the agent ends that download
// at once rather than waiting for a stream until its download timeout. An
// agent that does not know UpdateCancel ignores it (unknown messages are
// ignored) and gives up at its timeout, as before.

// UpdateService is the service name in the header of a stream that
// carries a release binary. It is not a valid service name (those are DNS
// labels), so it can never reach a tenant service; an agent that does not
// know it refuses it as an unknown service.
const UpdateService = "_update"

// CapUpdate in a Hello says that the agent can update itself.
const CapUpdate = "update"

// CapUpdateTrial in a Hello marks the short-lived trial of a new binary
// (it connects once to prove it works, then exits): it is not offered
// updates and is not counted as the agent's version.
const CapUpdateTrial = "update-trial"

// UpdateOffer offers a release to an agent.
type UpdateOffer struct {
	ID                string `json:"id"` // names the offer in UpdateFetch, the stream header and UpdateStatus
	Version           string `json:"version"`
	Manifest          []byte `json:"manifest"`           // the signed manifest bytes
	ManifestSignature []byte `json:"manifest_signature"` // minisign
	BinarySignature   []byte `json:"binary_signature"`   // minisign, over the binary
}

// UpdateFetch asks the relay for the binary of offer ID.
type UpdateFetch struct {
	ID      string `json:"id"`
	Version string `json:"version"`
}

// UpdateCancel tells the agent that the relay will not send the binary of
// offer ID, and why (Code: a Code name; CodeUnavailable when the release
// was removed since it was offered). It is not a verdict on the release:
// the agent takes it again when it is offered again.
type UpdateCancel struct {
	ID      string `json:"id"`
	Version string `json:"version"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Err converts an UpdateCancel into an *Error; an unknown code name
// becomes CodeInternal with the name kept in the message.
func (c *UpdateCancel) Err() *Error {
	return (&Reject{Code: c.Code, Message: c.Message}).Err()
}

// UpdateStatus reports what an agent did with an update.
type UpdateStatus struct {
	ID      string `json:"id,omitempty"` // the offer, when the event belongs to one
	Version string `json:"version"`      // the release concerned
	// From is the version the agent ran before (on applied, succeeded and
	// rolled_back).
	From  string `json:"from,omitempty"`
	State string `json:"state"` // one of the Update… states
	// Reason is a short stable word (release.Reason…) for refusals and
	// rollbacks; Message explains it.
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// Update states an agent reports.
const (
	UpdateRefused     = "refused"     // the offer or the download failed a check; the binary was not touched (reason busy: or it was put back, the agent stopping during the trial)
	UpdateDownloaded  = "downloaded"  // the binary is downloaded and verified
	UpdateApplied     = "applied"     // the new binary passed its trial; the agent restarts into it
	UpdateSucceeded   = "succeeded"   // the new binary runs and is connected
	UpdateRolledBack  = "rolled_back" // the new binary failed; the previous one is back
	UpdateFailed      = "failed"      // the update failed in a way that left the old binary running
	UpdateOffered     = "offered"     // (relay only) offered, no answer yet
	UpdateDownloading = "downloading" // (relay only) the binary is being sent
)

func (*UpdateOffer) Type() MessageType  { return TypeUpdateOffer }
func (*UpdateFetch) Type() MessageType  { return TypeUpdateFetch }
func (*UpdateStatus) Type() MessageType { return TypeUpdateStatus }
func (*UpdateCancel) Type() MessageType { return TypeUpdateCancel }
