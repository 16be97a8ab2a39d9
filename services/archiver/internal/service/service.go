// Package service is the archiver service: one method per step operation, typed
// arguments and results from contracts. Transport (JetStream), logging and metrics wrap
// it from outside (see pkg/worker).
package service

import (
	"context"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/worker"
)

// Service executes the archiver steps. Every method is idempotent: a command may be
// delivered again after the method did its work.
type Service interface {
	// Archive archives a staging area (tar + zstd or gzip) with a manifest.
	Archive(ctx context.Context, args contracts.ArchiveArgs) (contracts.ArtifactResult, error)
	// Dump dumps a database through a tunnel into staging.
	Dump(ctx context.Context, args contracts.DumpArgs) (contracts.ArtifactResult, error)
}

// Ops binds the methods of s to their operations for worker.NewHandler.
func Ops(s Service) []worker.Op {
	return []worker.Op{
		worker.Typed(contracts.OpArchive, s.Archive),
		worker.Typed(contracts.OpDump, s.Dump),
	}
}

// New returns the archiver service of this version. Its steps are not implemented yet:
// each fails with code not_supported instead of pretending success.
func New() Service { return notYet{} }

type notYet struct{}

// Archive is not implemented yet.
func (notYet) Archive(context.Context, contracts.ArchiveArgs) (contracts.ArtifactResult, error) {
	return contracts.ArtifactResult{}, worker.ErrNotSupported(contracts.ServiceArchiver, contracts.OpArchive)
}

// Dump is not implemented yet.
func (notYet) Dump(context.Context, contracts.DumpArgs) (contracts.ArtifactResult, error) {
	return contracts.ArtifactResult{}, worker.ErrNotSupported(contracts.ServiceArchiver, contracts.OpDump)
}
