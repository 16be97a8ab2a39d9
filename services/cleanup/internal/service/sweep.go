package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/staging"
	"github.com/nats-io/nats.go/jetstream"
)

// Sweeper removes orphaned staging: the staging of jobs that are finished, or that no
// job record knows (a job's record always exists before its first step stages
// anything). A job's own remove-staging step normally does this; the sweep catches what
// a crash or a lost command left behind.
type Sweeper struct {
	Staging staging.Staging
	Jobs    jetstream.KeyValue
	Log     *slog.Logger
}

// Sweep removes orphaned staging once and returns the job ids it removed.
func (s *Sweeper) Sweep(ctx context.Context) ([]string, error) {
	jobs, err := s.Staging.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing staging: %w", err)
	}
	var removed []string
	for _, job := range jobs {
		why, orphan, err := s.orphan(ctx, job)
		if err != nil {
			return removed, err
		}
		if !orphan {
			continue
		}
		if err := s.Staging.Remove(ctx, job); err != nil {
			return removed, fmt.Errorf("removing orphaned staging of %s: %w", job, err)
		}
		s.Log.Info("orphaned staging removed", "job_id", job, "reason", why)
		removed = append(removed, job)
	}
	return removed, nil
}

func (s *Sweeper) orphan(ctx context.Context, job string) (string, bool, error) {
	e, err := s.Jobs.Get(ctx, job)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "no such job", true, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("reading job %s: %w", job, err)
	}
	var j contracts.Job
	if err := json.Unmarshal(e.Value(), &j); err != nil {
		return "", false, fmt.Errorf("decoding job %s: %w", job, err)
	}
	if j.State.Final() {
		return "job " + string(j.State), true, nil
	}
	return "", false, nil
}
