// Package service is the connector service: one method per step operation, typed
// arguments and results from contracts. Transport (JetStream), logging and metrics wrap
// it from outside (see pkg/worker).
package service

import (
	"context"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/worker"
)

// Service executes the connector steps. Every method is idempotent: a command may be
// delivered again after the method did its work.
type Service interface {
	// Connect opens (or re-verifies) an SSH session to the host and records a lease.
	Connect(ctx context.Context, args contracts.ConnectArgs) (contracts.ConnectResult, error)
	// Tunnel forwards a local listener to a port as seen from the host.
	Tunnel(ctx context.Context, args contracts.TunnelArgs) (contracts.TunnelResult, error)
	// Close closes every lease, connection and tunnel of the job.
	Close(ctx context.Context, args contracts.CloseArgs) (struct{}, error)
}

// Ops binds the methods of s to their operations for worker.NewHandler.
func Ops(s Service) []worker.Op {
	return []worker.Op{
		worker.Typed(contracts.OpConnect, s.Connect),
		worker.Typed(contracts.OpTunnel, s.Tunnel),
		worker.Typed(contracts.OpClose, s.Close),
	}
}

// New returns the connector service of this version. Its steps are not implemented yet:
// each fails with code not_supported instead of pretending success.
func New() Service { return notYet{} }

type notYet struct{}

// Connect is not implemented yet.
func (notYet) Connect(context.Context, contracts.ConnectArgs) (contracts.ConnectResult, error) {
	return contracts.ConnectResult{}, worker.ErrNotSupported(contracts.ServiceConnector, contracts.OpConnect)
}

// Tunnel is not implemented yet.
func (notYet) Tunnel(context.Context, contracts.TunnelArgs) (contracts.TunnelResult, error) {
	return contracts.TunnelResult{}, worker.ErrNotSupported(contracts.ServiceConnector, contracts.OpTunnel)
}

// Close is not implemented yet.
func (notYet) Close(context.Context, contracts.CloseArgs) (struct{}, error) {
	return struct{}{}, worker.ErrNotSupported(contracts.ServiceConnector, contracts.OpClose)
}
