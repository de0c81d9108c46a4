package protocol

import (
	"errors"
	"fmt"
	"strings"
)

// Code classifies why a request was refused. Codes travel on the wire (as a
// byte in stream replies and as their name in control messages), so their
// values and names are stable: never renumber or rename one.
type Code uint8

// The codes. CodeOK is the only success.
const (
	CodeOK                 Code = 0
	CodeUnknownService     Code = 1  // the agent has no service of that name
	CodeNotAllowed         Code = 2  // policy forbids this caller that target
	CodeTargetUnreachable  Code = 3  // the agent could not connect to the service
	CodeTimeout            Code = 4  // a step did not finish in time
	CodeUnknownTenant      Code = 5  // no such tenant
	CodeNoAgent            Code = 6  // the tenant has no connected, healthy agent
	CodeUnauthenticated    Code = 7  // missing or wrong credentials
	CodeBadRequest         Code = 8  // malformed address, header or message
	CodeInternal           Code = 9  // a bug or a broken dependency on the answering side
	CodeUnavailable        Code = 10 // the answering side is draining or shutting down, or no longer has what was asked for (a removed release)
	CodeUnsupportedVersion Code = 11 // no protocol version in common
	CodeInvalidToken       Code = 12 // unknown join token or wrong secret
	CodeTokenExpired       Code = 13 // the join token's expiry has passed
	CodeTokenUsedUp        Code = 14 // the join token has no uses left
	CodeUnknownAgent       Code = 15 // certificate is valid but the agent is not (or no longer) registered
	CodeLimitExceeded      Code = 16 // a tenant or backend limit was reached
	CodeCertExpired        Code = 17 // the agent's certificate has expired
	CodeRevoked            Code = 18 // the agent's identity was revoked
	CodeRateLimited        Code = 19 // too many failed attempts (credentials, renewals) lately: try again later
	CodeCertSuperseded     Code = 20 // the agent's certificate was replaced by a newer one: only the newest is accepted
)

var codeNames = [...]string{
	CodeOK:                 "ok",
	CodeUnknownService:     "unknown_service",
	CodeNotAllowed:         "not_allowed",
	CodeTargetUnreachable:  "target_unreachable",
	CodeTimeout:            "timeout",
	CodeUnknownTenant:      "unknown_tenant",
	CodeNoAgent:            "no_agent",
	CodeUnauthenticated:    "unauthenticated",
	CodeBadRequest:         "bad_request",
	CodeInternal:           "internal",
	CodeUnavailable:        "unavailable",
	CodeUnsupportedVersion: "unsupported_version",
	CodeInvalidToken:       "invalid_token",
	CodeTokenExpired:       "token_expired",
	CodeTokenUsedUp:        "token_used_up",
	CodeUnknownAgent:       "unknown_agent",
	CodeLimitExceeded:      "limit_exceeded",
	CodeCertExpired:        "certificate_expired",
	CodeRevoked:            "revoked",
	CodeRateLimited:        "rate_limited",
	CodeCertSuperseded:     "certificate_superseded",
}

// String returns the stable snake_case name of c, or "code_N" for a code
// this version does not know.
func (c Code) String() string {
	if int(c) < len(codeNames) && codeNames[c] != "" {
		return codeNames[c]
	}
	return fmt.Sprintf("code_%d", uint8(c))
}

// ParseCode is the inverse of Code.String for known codes.
func ParseCode(s string) (Code, bool) {
	for i, n := range codeNames {
		if n == s {
			return Code(i), true
		}
	}
	return 0, false
}

// Temporary reports whether retrying the same request later may succeed
// without anyone changing configuration.
func (c Code) Temporary() bool {
	switch c {
	case CodeTargetUnreachable, CodeTimeout, CodeNoAgent, CodeInternal, CodeUnavailable, CodeLimitExceeded, CodeRateLimited:
		return true
	}
	return false
}

// Error is a refusal with a Code and a human-readable message. Compare with
// errors.Is against the Err… sentinels, which match on Code alone:
//
//	if errors.Is(err, protocol.ErrUnknownService) { … }
type Error struct {
	Code    Code
	Message string
}

// Errorf returns an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Message == "" {
		return e.Code.String()
	}
	return e.Code.String() + ": " + e.Message
}

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t != nil && t.Code == e.Code
}

// Temporary reports whether the refusal may go away on its own.
func (e *Error) Temporary() bool { return e.Code.Temporary() }

// Sentinels for errors.Is.
var (
	ErrUnknownService     = &Error{Code: CodeUnknownService}
	ErrNotAllowed         = &Error{Code: CodeNotAllowed}
	ErrTargetUnreachable  = &Error{Code: CodeTargetUnreachable}
	ErrTimeout            = &Error{Code: CodeTimeout}
	ErrUnknownTenant      = &Error{Code: CodeUnknownTenant}
	ErrNoAgent            = &Error{Code: CodeNoAgent}
	ErrUnauthenticated    = &Error{Code: CodeUnauthenticated}
	ErrBadRequest         = &Error{Code: CodeBadRequest}
	ErrInternal           = &Error{Code: CodeInternal}
	ErrUnavailable        = &Error{Code: CodeUnavailable}
	ErrUnsupportedVersion = &Error{Code: CodeUnsupportedVersion}
	ErrInvalidToken       = &Error{Code: CodeInvalidToken}
	ErrTokenExpired       = &Error{Code: CodeTokenExpired}
	ErrTokenUsedUp        = &Error{Code: CodeTokenUsedUp}
	ErrUnknownAgent       = &Error{Code: CodeUnknownAgent}
	ErrLimitExceeded      = &Error{Code: CodeLimitExceeded}
	ErrCertExpired        = &Error{Code: CodeCertExpired}
	ErrRevoked            = &Error{Code: CodeRevoked}
	ErrRateLimited        = &Error{Code: CodeRateLimited}
	ErrCertSuperseded     = &Error{Code: CodeCertSuperseded}
)

// CodeOf returns the code carried by err, CodeOK for nil and CodeInternal for
// any error that is not an *Error.
func CodeOf(err error) Code {
	if err == nil {
		return CodeOK
	}
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	return CodeInternal
}

// Clip bounds s, a text a peer sent, to n bytes of valid UTF-8 for logs
// and records, marking a cut with "…".
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
