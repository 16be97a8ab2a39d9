// Package service is the cleanup service: one method per step operation, typed
// arguments and results from contracts. Transport (JetStream), logging and metrics wrap
// it from outside (see pkg/worker).
package service

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/logctx"
	"github.com/ferrydesk/ferry/pkg/staging"
	"github.com/ferrydesk/ferry/pkg/worker"
)

// Service executes the cleanup steps. Every method is idempotent: a command may be
// delivered again after the method did its work.
type Service interface {
	// RemoveStaging removes the job's staging area.
	RemoveStaging(ctx context.Context, args contracts.RemoveStagingArgs) (struct{}, error)
	// Prune keeps the newest backups ferry delivered into a directory on a host and
	// removes the older ones; files ferry did not write are never touched.
	Prune(ctx context.Context, args contracts.PruneArgs) (contracts.PruneResult, error)
}

// Ops binds the methods of s to their operations for worker.NewHandler.
func Ops(s Service) []worker.Op {
	return []worker.Op{
		worker.Typed(contracts.OpRemoveStaging, s.RemoveStaging),
		worker.Typed(contracts.OpPrune, s.Prune),
	}
}

// New returns the cleanup service working on the staging area st, reaching hosts for
// prune through connector (nil: prune is not supported).
func New(st staging.Staging, connector Connector) Service {
	return &cleanup{staging: st, connector: connector}
}

type cleanup struct {
	staging   staging.Staging
	connector Connector
}

// RemoveStaging removes the staging directory of the job the step belongs to (the
// job id comes from the command, through worker.JobID). A job without a staging
// directory is already clean: that is success, so a redelivered command does no harm.
func (c *cleanup) RemoveStaging(ctx context.Context, _ contracts.RemoveStagingArgs) (struct{}, error) {
	job := worker.JobID(ctx)
	if !contracts.ValidID(job) {
		return struct{}{}, worker.Permanent(contracts.CodeInvalidCommand,
			fmt.Errorf("cleanup remove-staging: %q is not a job id", job))
	}
	if err := c.staging.Remove(ctx, job); err != nil {
		if errors.Is(err, staging.ErrInvalidJob) {
			return struct{}{}, worker.Permanent(contracts.CodeInvalidCommand, err)
		}
		return struct{}{}, err // retryable: the orchestrator's policy bounds it
	}
	logctx.From(ctx).Debug("staging removed")
	return struct{}{}, nil
}
