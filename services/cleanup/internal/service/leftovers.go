package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"sync"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/remote"
	"github.com/nats-io/nats.go/jetstream"
)

// A job that ends before its push finished leaves temporary files on the customer (the
// push's .part files, an unpacked tree's incoming directory). remove-staging removes
// them over the job's session; when the host cannot be reached then (often the reason
// the job failed), they are recorded in BucketLeftovers and the sweep removes them once
// the host answers again, on a connection of its own.

// Pending keeps the leftovers a job's cleanup could not remove, for the sweep.
type Pending interface {
	Keep(ctx context.Context, p contracts.PendingLeftover) error
}

// LeftoverStore is Pending in a key-value bucket (BucketLeftovers), one key per job
// and host (contracts.LeaseKey).
type LeftoverStore struct {
	KV jetstream.KeyValue
}

// Keep records p; a record already there for the job and host keeps its Since.
func (s *LeftoverStore) Keep(ctx context.Context, p contracts.PendingLeftover) error {
	key := contracts.LeaseKey(p.JobID, p.Host)
	if e, err := s.KV.Get(ctx, key); err == nil {
		var old contracts.PendingLeftover
		if json.Unmarshal(e.Value(), &old) == nil && !old.Since.IsZero() {
			p.Since = old.Since
		}
	}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if _, err := s.KV.Put(ctx, key, b); err != nil {
		return fmt.Errorf("recording leftovers of %s on %s: %w", p.JobID, p.Host, err)
	}
	return nil
}

// pendingEntry is a record with its key; bad is set when the value does not decode.
type pendingEntry struct {
	key string
	p   contracts.PendingLeftover
	bad error
}

// all returns every record.
func (s *LeftoverStore) all(ctx context.Context) ([]pendingEntry, error) {
	keys, err := s.KV.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", contracts.BucketLeftovers, err)
	}
	defer func() { _ = keys.Stop() }()
	var out []pendingEntry
	for k := range keys.Keys() {
		e, err := s.KV.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s %s: %w", contracts.BucketLeftovers, k, err)
		}
		pe := pendingEntry{key: k}
		if err := json.Unmarshal(e.Value(), &pe.p); err != nil {
			pe.bad = err
		}
		out = append(out, pe)
	}
	return out, ctx.Err()
}

func (s *LeftoverStore) forget(ctx context.Context, key string) error {
	return s.KV.Delete(ctx, key)
}

// removeNames removes the job's temporary files l names in l.Dir on r. A directory
// that does not exist holds nothing; a file that is not there is no error. It fails
// when the directory cannot be resolved or a name could not be removed.
func removeNames(r Remote, l contracts.Leftover, log *slog.Logger) error {
	dir, err := r.Resolve(l.Dir)
	if errors.Is(err, remote.ErrNotFound) {
		return nil // nothing was written there
	}
	if err != nil {
		return err
	}
	var failed error
	for _, n := range l.Names {
		p := path.Join(dir, n)
		if err := r.RemoveAll(p); err != nil {
			log.Warn("temporary file on the host not removed", "path", p, "err", err)
			failed = err
			continue
		}
		log.Debug("temporary file on the host removed (if it was there)", "path", p)
	}
	return failed
}

// keepable reports whether leftovers that err kept from being removed are worth
// recording for the sweep: the host was out of reach or refused the connection, not
// unknown to the inventory nor named wrongly.
func keepable(err error) bool {
	var se *contracts.StepError
	if errors.As(err, &se) {
		return se.Code != contracts.CodeNotFound && se.Code != contracts.CodeInvalidCommand
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, remote.ErrConnection)
}

// LeftoverSweeper removes the leftovers recorded in the store, one connection per host.
type LeftoverSweeper struct {
	Store *LeftoverStore
	Hosts HostDialer
	Log   *slog.Logger
	// MaxAge is how long a host is tried for a record (default
	// contracts.PendingLeftoverMaxAge); then the paths are logged and the record dropped.
	MaxAge time.Duration
}

// SweepResult counts what one sweep did.
type SweepResult struct {
	Removed int // records whose files are gone
	Pending int // records kept for the next sweep
	Dropped int // records given up (too old, unknown host, not a job's temporary names)
}

// sweepHostsAtOnce bounds the hosts a sweep tries at the same time: a host that
// accepts connections but never answers holds its turn until the dial times out.
const sweepHostsAtOnce = 8

// Sweep tries every recorded host once, up to sweepHostsAtOnce of them at a time.
func (s *LeftoverSweeper) Sweep(ctx context.Context) (SweepResult, error) {
	var res SweepResult
	entries, err := s.Store.all(ctx)
	if err != nil {
		return res, err
	}
	byHost := map[string][]pendingEntry{}
	var hosts []string
	for _, e := range entries {
		if err := check(e); err != nil {
			if s.drop(ctx, e, "leftovers record refused", "err", err) {
				res.Dropped++
			}
			continue
		}
		if _, ok := byHost[e.p.Host]; !ok {
			hosts = append(hosts, e.p.Host)
		}
		byHost[e.p.Host] = append(byHost[e.p.Host], e)
	}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		turn = make(chan struct{}, sweepHostsAtOnce)
	)
	for _, host := range hosts {
		select {
		case turn <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-turn }()
			r := s.sweepHost(ctx, host, byHost[host])
			mu.Lock()
			defer mu.Unlock()
			res.Removed += r.Removed
			res.Pending += r.Pending
			res.Dropped += r.Dropped
		}()
	}
	wg.Wait()
	return res, ctx.Err()
}

// sweepHost tries one host for its records.
func (s *LeftoverSweeper) sweepHost(ctx context.Context, host string, entries []pendingEntry) SweepResult {
	var res SweepResult
	maxAge := s.MaxAge
	if maxAge <= 0 {
		maxAge = contracts.PendingLeftoverMaxAge
	}
	r, done, err := s.Hosts.Open(ctx, host)
	if err != nil {
		var se *contracts.StepError
		for _, e := range entries {
			switch {
			case errors.As(err, &se) && se.Code == contracts.CodeNotFound:
				if s.drop(ctx, e, "temporary files on a host no longer in the inventory not removed", "err", err) {
					res.Dropped++
				}
			case time.Since(e.p.Since) > maxAge:
				if s.drop(ctx, e, "temporary files on the host not removed: given up", "since", e.p.Since, "err", err) {
					res.Dropped++
				}
			default:
				s.Log.Debug("host of leftovers still out of reach", "job_id", e.p.JobID, "host", host, "err", err)
				res.Pending++
			}
		}
		return res
	}
	defer done()
	for _, e := range entries {
		log := s.Log.With("job_id", e.p.JobID, "host", host)
		if err := removeNames(r, e.p.Leftover, log); err != nil {
			log.Warn("leftovers not removed yet", "dir", e.p.Dir, "names", e.p.Names, "err", err)
			res.Pending++
			continue
		}
		if err := s.Store.forget(ctx, e.key); err != nil {
			log.Warn("dropping a leftovers record", "key", e.key, "err", err)
		}
		log.Info("leftovers removed from the host", "dir", e.p.Dir, "names", e.p.Names, "since", e.p.Since)
		res.Removed++
	}
	return res
}

// drop logs a record's paths with msg and forgets the record; it reports whether
// the record is gone.
func (s *LeftoverSweeper) drop(ctx context.Context, e pendingEntry, msg string, args ...any) bool {
	s.Log.Warn(msg, append([]any{"job_id", e.p.JobID, "host", e.p.Host, "dir", e.p.Dir, "names", e.p.Names, "key", e.key}, args...)...)
	if err := s.Store.forget(ctx, e.key); err != nil {
		if ctx.Err() == nil {
			s.Log.Warn("dropping a leftovers record", "key", e.key, "err", err)
		}
		return false
	}
	return true
}

// check refuses a record that could make the sweep remove what is not a job's own:
// every name must be one of its job's temporary names, as remove-staging demands.
func check(e pendingEntry) error {
	if e.bad != nil {
		return e.bad
	}
	if !contracts.ValidID(e.p.JobID) || !contracts.ValidID(e.p.Host) || e.key != contracts.LeaseKey(e.p.JobID, e.p.Host) {
		return fmt.Errorf("job %q and host %q do not match the key", e.p.JobID, e.p.Host)
	}
	for _, n := range e.p.Names {
		if !contracts.IsTempName(n, e.p.JobID) {
			return fmt.Errorf("%q is not a temporary name of job %s", n, e.p.JobID)
		}
	}
	return nil
}
