package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydesk/ferry/contracts"
)

// Permanent marks err as one that no retry can fix (bad arguments, refused host key).
func Permanent(code string, err error) error {
	return &contracts.StepError{Code: code, Message: err.Error(), Retryable: false}
}

// Retryable marks err as one a later attempt may get past (unreachable host, timeout).
func Retryable(code string, err error) error {
	return &contracts.StepError{Code: code, Message: err.Error(), Retryable: true}
}

// ErrNotSupported is returned for operations this version does not implement: the job
// fails with a clear message instead of a pretended success.
func ErrNotSupported(s contracts.Service, op contracts.Op) error {
	return &contracts.StepError{
		Code:    contracts.CodeNotSupported,
		Message: fmt.Sprintf("%s %s is not supported by this version of ferry", s, op),
	}
}

// deferral asks the runner to redeliver the command later without it counting as an
// attempt: the resource the step needs is not ready yet.
type deferral struct {
	after time.Duration
	err   error
}

func (d *deferral) Error() string { return fmt.Sprintf("deferred for %s: %v", d.after, d.err) }
func (d *deferral) Unwrap() error { return d.err }

// Defer redelivers the command after d (nak with delay).
func Defer(d time.Duration, err error) error { return &deferral{after: d, err: err} }

// Classify turns any error into a StepError. Errors not marked otherwise are retryable:
// the step's retry policy in the orchestrator bounds them.
func Classify(err error) *contracts.StepError {
	var se *contracts.StepError
	if errors.As(err, &se) {
		return se
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &contracts.StepError{Code: contracts.CodeTimeout, Message: err.Error(), Retryable: true}
	}
	return &contracts.StepError{Code: contracts.CodeInternal, Message: err.Error(), Retryable: true}
}
