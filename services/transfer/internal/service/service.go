// Package service is the transfer service: one method per step operation, typed
// arguments and results from contracts. Transport (JetStream), logging and metrics wrap
// it from outside (see pkg/worker).
package service

import (
	"context"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/worker"
)

// Service executes the transfer steps. Every method is idempotent: a command may be
// delivered again after the method did its work.
type Service interface {
	// CopyRemote copies files on a remote host, server side where possible.
	CopyRemote(ctx context.Context, args contracts.CopyRemoteArgs) (contracts.DeliveryResult, error)
	// Pull copies files from a host into the job's staging area.
	Pull(ctx context.Context, args contracts.PullArgs) (contracts.DeliveryResult, error)
	// Push sends a staged artifact to a customer server: temporary name, verified, renamed.
	Push(ctx context.Context, args contracts.PushArgs) (contracts.DeliveryResult, error)
	// Deliver sends a staged artifact to the operator's computer.
	Deliver(ctx context.Context, args contracts.DeliverArgs) (contracts.DeliveryResult, error)
}

// Ops binds the methods of s to their operations for worker.NewHandler.
func Ops(s Service) []worker.Op {
	return []worker.Op{
		worker.Typed(contracts.OpCopyRemote, s.CopyRemote),
		worker.Typed(contracts.OpPull, s.Pull),
		worker.Typed(contracts.OpPush, s.Push),
		worker.Typed(contracts.OpDeliver, s.Deliver),
	}
}

// New returns the transfer service of this version. Its steps are not implemented yet:
// each fails with code not_supported instead of pretending success.
func New() Service { return notYet{} }

type notYet struct{}

// CopyRemote is not implemented yet.
func (notYet) CopyRemote(context.Context, contracts.CopyRemoteArgs) (contracts.DeliveryResult, error) {
	return contracts.DeliveryResult{}, worker.ErrNotSupported(contracts.ServiceTransfer, contracts.OpCopyRemote)
}

// Pull is not implemented yet.
func (notYet) Pull(context.Context, contracts.PullArgs) (contracts.DeliveryResult, error) {
	return contracts.DeliveryResult{}, worker.ErrNotSupported(contracts.ServiceTransfer, contracts.OpPull)
}

// Push is not implemented yet.
func (notYet) Push(context.Context, contracts.PushArgs) (contracts.DeliveryResult, error) {
	return contracts.DeliveryResult{}, worker.ErrNotSupported(contracts.ServiceTransfer, contracts.OpPush)
}

// Deliver is not implemented yet.
func (notYet) Deliver(context.Context, contracts.DeliverArgs) (contracts.DeliveryResult, error) {
	return contracts.DeliveryResult{}, worker.ErrNotSupported(contracts.ServiceTransfer, contracts.OpDeliver)
}
