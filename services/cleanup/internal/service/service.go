// Package service is the cleanup service: one method per step operation, typed
// arguments and results from contracts. Transport (JetStream), logging and metrics wrap
// it from outside (see pkg/worker).
package service

import (
	"context"
	"errors"
	"fmt"
	"time"

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

// Options are what the service reaches beyond its staging area.
type Options struct {
	// Connector reaches hosts under the job's lease, for prune and a job's leftovers
	// (nil: prune is not supported, leftovers are logged).
	Connector Connector
	// Pending records the leftovers of hosts out of reach for the sweep (nil: they
	// are logged).
	Pending Pending
	// LeftoversWait bounds the removal of a job's leftovers on each host (default 30 s);
	// a host out of reach is tried every 2 s meanwhile.
	LeftoversWait time.Duration
}

// New returns the cleanup service working on the staging area st.
func New(st staging.Staging, opts Options) Service {
	if opts.LeftoversWait <= 0 {
		opts.LeftoversWait = 30 * time.Second
	}
	return &cleanup{staging: st, connector: opts.Connector, pending: opts.Pending, leftoversWait: opts.LeftoversWait}
}

type cleanup struct {
	staging       staging.Staging
	connector     Connector
	pending       Pending
	leftoversWait time.Duration
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
		lctx, cancel := context.WithTimeout(ctx, c.leftoversWait)
		defer cancel()
		for _, l := range args.Leftovers {
			c.removeLeftovers(lctx, job, l)
		}
	}
	return struct{}{}, nil
}

// leftoversRetry is how often a host out of reach is tried for a job's leftovers.
const leftoversRetry = 2 * time.Second

// permanent reports whether err is a step error that trying again cannot get past.
func permanent(err error) bool {
	var se *contracts.StepError
	return errors.As(err, &se) && !se.Retryable
}

// pause waits d and reports true, or false as soon as ctx ends.
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// removeLeftovers removes the job's temporary files l names on a host. A host that
// went away (the reason the job failed, often) is tried again until the budget of ctx
// is spent: it may be back a moment later. What cannot be removed then is recorded for
// the sweep (see LeftoverSweeper), or logged with its paths when it cannot be.
func (c *cleanup) removeLeftovers(ctx context.Context, job string, l contracts.Leftover) {
	log := logctx.From(ctx).With("host", l.Host)
	if c.connector == nil {
		log.Warn("temporary files on the host not removed: no connections here", "dir", l.Dir, "names", l.Names)
		return
	}
	r, err := c.connector.Connect(ctx, job, l.Host)
	for err != nil && !permanent(err) && pause(ctx, leftoversRetry) {
		r, err = c.connector.Connect(ctx, job, l.Host)
	}
	if err == nil {
		if err = removeNames(r, l, log); err == nil {
			return
		}
	}
	if c.pending != nil && keepable(err) {
		// ctx is spent by now: the record gets a moment of its own.
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		perr := c.pending.Keep(kctx, contracts.PendingLeftover{Schema: contracts.SchemaPendingLeftover, JobID: job,
			Since: time.Now().UTC(), Reason: err.Error(), Leftover: l})
		if perr == nil {
			log.Warn("temporary files on the host not removed yet: the sweep removes them once the host answers",
				"dir", l.Dir, "names", l.Names, "err", err)
			return
		}
		log.Warn("leftovers not recorded for the sweep", "err", perr)
	}
	log.Warn("temporary files on the host not removed", "dir", l.Dir, "names", l.Names, "err", err)
}
