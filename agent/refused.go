package agent

import (
	"errors"
	"fmt"

	"github.com/tetherhq/tether/protocol"
)

// ExitRefused is the exit status of tether-agent run and service when Run
// stopped with a RefusedError: a relay refused the agent's identity for
// good, so starting it again cannot help. The systemd unit does not restart
// the agent on it (RestartPreventExitStatus=); on Windows the service stops
// with it as its service-specific exit code, on which the service control
// manager takes no recovery action.
const ExitRefused = 3

// RefusedError is returned by Run when a relay refused this agent in a way
// that no retry can fix and only a new enrolment does (finalRefusal): the
// agent stops rather than knock on the relay's door for ever.
type RefusedError struct {
	StateDir string          // the agent's state directory, for the enrolment that fixes it
	Err      *protocol.Error // the refusal: its code and the relay's message
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("refused for good: %v; restarting the agent will not help: enrol it again with a new join token (tether-agent enroll --force --state-dir %s …), then start it", e.Err, e.StateDir)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// ExitCode is ExitRefused; the service run mode reads it.
func (e *RefusedError) ExitCode() int { return ExitRefused }

// finalRefusal reports whether err is a relay's refusal of the agent's
// identity that only a new enrolment fixes. It is not used for other
// refusals that an operator can lift on the relay (not_allowed: networks;
// limit_exceeded; unsupported_version: a relay upgrade or downgrade) nor
// for TLS-level refusals, which do not say why (a relay serving with the
// wrong CA refuses every certificate): the agent keeps retrying those,
// slowly.
//
//   - revoked: an operator revoked this identity; there is no un-revoke.
//   - unknown_agent: the relay's store has no such agent (deleted, or the
//     agent enrolled elsewhere).
//   - certificate_expired: an expired certificate cannot be renewed.
func finalRefusal(err error) bool {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case protocol.CodeRevoked, protocol.CodeUnknownAgent, protocol.CodeCertExpired:
		return true
	}
	return false
}

// refusedError wraps err, a final refusal (finalRefusal), for Run to
// return.
func (a *Agent) refusedError(err error) *RefusedError {
	e := &RefusedError{StateDir: a.cfg.StateDir}
	errors.As(err, &e.Err)
	return e
}

// refusedBy returns the function a connection slot calls with a final
// refusal: the first one is kept for Run to return and logged, once, with
// what to do; then Run stops (stop cancels its context).
func (a *Agent) refusedBy(stop func()) func(error) {
	return func(err error) {
		if e := a.refusedError(err); a.refused.CompareAndSwap(nil, e) {
			a.log.Error("the relay refused this agent for good: stopping", "code", e.Err.Code.String(), "err", e, "exit_status", ExitRefused)
		}
		stop()
	}
}
