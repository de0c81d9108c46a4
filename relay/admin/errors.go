package admin

import (
	"errors"
	"fmt"

	"github.com/tetherhq/tether/relay/internal/store"
)

// Classes of the errors Admin methods return, for callers that branch on
// them (the admin API maps them to HTTP statuses and error codes); test
// with errors.Is.
var (
	// ErrNotFound: the tenant, agent, token or backend named does not exist.
	ErrNotFound = store.ErrNotFound
	// ErrExists: what is being created exists already.
	ErrExists = store.ErrExists
	// ErrInvalid: an argument is malformed or out of range.
	ErrInvalid = errors.New("invalid argument")
	// ErrInUse: what is to be removed is still in use (a release a
	// rollout offers, or agents may still fetch).
	ErrInUse = store.ErrInUse
)

// classError carries a message for people and a class for programs.
type classError struct {
	class error
	msg   string
}

func (e *classError) Error() string { return e.msg }
func (e *classError) Unwrap() error { return e.class }

func invalidf(format string, args ...any) error {
	return &classError{class: ErrInvalid, msg: fmt.Sprintf(format, args...)}
}

func notFoundf(format string, args ...any) error {
	return &classError{class: ErrNotFound, msg: fmt.Sprintf(format, args...)}
}

func existsf(format string, args ...any) error {
	return &classError{class: ErrExists, msg: fmt.Sprintf(format, args...)}
}

// invalid classes err (a validation failure) as ErrInvalid, keeping its
// message; nil stays nil.
func invalid(err error) error {
	if err == nil {
		return nil
	}
	return &classError{class: ErrInvalid, msg: err.Error()}
}

// Errorf returns an error of class (ErrInvalid, ErrNotFound or ErrExists)
// with a message of its own, for callers outside this package that refuse
// in Admin's terms.
func Errorf(class error, format string, args ...any) error {
	return &classError{class: class, msg: fmt.Sprintf(format, args...)}
}
