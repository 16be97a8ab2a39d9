// Package service is the cleanup service: one method per step operation, typed
// arguments and results from contracts. Transport (JetStream), logging and metrics wrap
// it from outside (see pkg/worker).
package service

import (
	"context"
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/logctx"
	"github.com/ferrydesk/ferry/pkg/remote"
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
// The job's temporary files that args.Leftovers names on hosts go too, best effort
// (see removeLeftovers); a name that is not one of the job's is refused.
func (c *cleanup) RemoveStaging(ctx context.Context, args contracts.RemoveStagingArgs) (struct{}, error) {
	job := worker.JobID(ctx)
	if !contracts.ValidID(job) {
		return struct{}{}, worker.Permanent(contracts.CodeInvalidCommand,
			fmt.Errorf("cleanup remove-staging: %q is not a job id", job))
	}
	for _, l := range args.Leftovers {
		for _, n := range l.Names {
			if !contracts.IsTempName(n, job) {
				return struct{}{}, worker.Permanent(contracts.CodeInvalidCommand,
					fmt.Errorf("cleanup remove-staging: %q is not a temporary name of job %s", n, job))
			}
		}
	}
	if err := c.staging.Remove(ctx, job); err != nil {
		if errors.Is(err, staging.ErrInvalidJob) {
			return struct{}{}, worker.Permanent(contracts.CodeInvalidCommand, err)
		}
		return struct{}{}, err // retryable: the orchestrator's policy bounds it
	}
	logctx.From(ctx).Debug("staging removed")
	if len(args.Leftovers) > 0 {
		// A customer out of reach must not hold the job's end for the whole step timeout.
		lctx, cancel := context.WithTimeout(ctx, leftoversTimeout)
		defer cancel()
		for _, l := range args.Leftovers {
			c.removeLeftovers(lctx, job, l)
		}
	}
	return struct{}{}, nil
}

// leftoversTimeout bounds the removal of a job's leftovers on hosts; a host out of
// reach is tried every leftoversRetry meanwhile.
const (
	leftoversTimeout = 30 * time.Second
	leftoversRetry   = 2 * time.Second
)

// removeLeftovers removes the job's temporary files l names on a host, best effort:
// the job is ending, so what cannot be removed (the host unreachable) is logged with
// its path for a person once the time allowed is spent.
func (c *cleanup) removeLeftovers(ctx context.Context, job string, l contracts.Leftover) {
	log := logctx.From(ctx).With("host", l.Host)
	if c.connector == nil {
		log.Warn("temporary files on the host not removed: no connections here", "dir", l.Dir, "names", l.Names)
		return
	}
	notRemoved := func(err error) {
		log.Warn("temporary files on the host not removed", "dir", l.Dir, "names", l.Names, "err", err)
	}
	// A host that went away (the reason the job failed, often) is tried again until
	// the budget of ctx is spent: it may be back a moment later.
	r, err := c.connector.Connect(ctx, job, l.Host)
	for err != nil {
		var se *contracts.StepError
		if errors.As(err, &se) && !se.Retryable {
			notRemoved(err)
			return
		}
		select {
		case <-ctx.Done():
			notRemoved(err)
			return
		case <-time.After(leftoversRetry):
		}
		r, err = c.connector.Connect(ctx, job, l.Host)
	}
	dir, err := r.Resolve(l.Dir)
	if errors.Is(err, remote.ErrNotFound) {
		return // nothing was written there
	}
	if err != nil {
		notRemoved(err)
		return
	}
	for _, n := range l.Names {
		p := path.Join(dir, n)
		if err := r.RemoveAll(p); err != nil {
			log.Warn("temporary file on the host not removed", "path", p, "err", err)
			continue
		}
		log.Debug("temporary file on the host removed (if it was there)", "path", p)
	}
}
