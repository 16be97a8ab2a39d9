package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/nats-io/nats.go/jetstream"
)

// store keeps job records in the jobs bucket; every change is a compare-and-set on the
// entry's revision, so concurrent replicas never overwrite each other's work.
type store struct {
	kv jetstream.KeyValue
}

var (
	errNoChange  = errors.New("no change")
	errJobExists = errors.New("job exists")
	errNoJob     = errors.New("no such job")
)

func (s *store) get(ctx context.Context, id string) (*contracts.Job, uint64, error) {
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, errNoJob
	}
	if err != nil {
		return nil, 0, fmt.Errorf("reading job %s: %w", id, err)
	}
	var j contracts.Job
	if err := json.Unmarshal(e.Value(), &j); err != nil {
		return nil, 0, fmt.Errorf("decoding job %s: %w", id, err)
	}
	return &j, e.Revision(), nil
}

// create stores a new job; errJobExists when the id is taken (a duplicate submission).
func (s *store) create(ctx context.Context, j *contracts.Job) (uint64, error) {
	data, err := json.Marshal(j)
	if err != nil {
		return 0, err
	}
	rev, err := s.kv.Create(ctx, j.ID, data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, errJobExists
	}
	if err != nil {
		return 0, fmt.Errorf("creating job %s: %w", j.ID, err)
	}
	return rev, nil
}

// update reads the job, lets change mutate it, and writes it back if the revision is
// still the one read; on a conflict it starts over with the newer record. change returns
// errNoChange to leave the record as it is.
func (s *store) update(ctx context.Context, id string, change func(*contracts.Job) (effects, error)) (*contracts.Job, effects, error) {
	for try := 0; ; try++ {
		j, rev, err := s.get(ctx, id)
		if err != nil {
			return nil, effects{}, err
		}
		fx, err := change(j)
		if err != nil {
			return j, effects{}, err
		}
		data, err := json.Marshal(j)
		if err != nil {
			return nil, effects{}, err
		}
		_, err = s.kv.Update(ctx, id, data, rev)
		if err == nil {
			return j, fx, nil
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence && try < 20 {
			continue // another replica changed it first
		}
		return nil, effects{}, fmt.Errorf("updating job %s: %w", id, err)
	}
}
