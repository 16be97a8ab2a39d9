// Package session gives every ferry service SSH connections under a job's session
// lease. The connector's connect step verifies a host and records a lease (job, host,
// verified host-key fingerprint, expiry); transfer, archiver and cleanup dial the same
// host under that lease, requiring the same fingerprint, one pooled connection per lease
// per service. The close step deletes the lease, and every service drops its connection.
package session

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/logctx"
	"github.com/nats-io/nats.go/jetstream"
)

// Errors of lease lookups.
var (
	ErrNoLease      = errors.New("no session lease")
	ErrLeaseExpired = errors.New("session lease expired")
)

// Leases is the lease bucket.
type Leases struct {
	kv  jetstream.KeyValue
	now func() time.Time
}

// NewLeases wraps the lease bucket.
func NewLeases(kv jetstream.KeyValue) *Leases { return &Leases{kv: kv, now: time.Now} }

// OpenLeases binds to the lease bucket, waiting for it to be provisioned.
func OpenLeases(ctx context.Context, js jetstream.JetStream) (*Leases, error) {
	kv, err := bus.WaitKeyValue(ctx, js, contracts.BucketLeases)
	if err != nil {
		return nil, err
	}
	return NewLeases(kv), nil
}

// Get returns the live lease of job on host: ErrNoLease when there is none (the connect
// step did not run, or the job was closed), ErrLeaseExpired when it is past its expiry.
func (l *Leases) Get(ctx context.Context, job, host string) (contracts.Lease, uint64, error) {
	var ls contracts.Lease
	e, err := l.kv.Get(ctx, contracts.LeaseKey(job, host))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return ls, 0, fmt.Errorf("%w for host %s in job %s: its connect step has not run, or the job's sessions were closed", ErrNoLease, host, job)
	}
	if err != nil {
		return ls, 0, fmt.Errorf("reading lease %s: %w", contracts.LeaseKey(job, host), err)
	}
	if err := json.Unmarshal(e.Value(), &ls); err != nil {
		return ls, 0, fmt.Errorf("decoding lease %s: %w", e.Key(), err)
	}
	if !ls.Expires.After(l.now()) {
		return ls, e.Revision(), fmt.Errorf("%w for host %s in job %s (expired %s)", ErrLeaseExpired, host, job, ls.Expires.Format(time.RFC3339))
	}
	return ls, e.Revision(), nil
}

// Put stores a lease.
func (l *Leases) Put(ctx context.Context, ls contracts.Lease) error {
	ls.Schema = contracts.SchemaLease
	data, _ := json.Marshal(ls)
	if _, err := l.kv.Put(ctx, contracts.LeaseKey(ls.JobID, ls.Host), data); err != nil {
		return fmt.Errorf("recording lease %s: %w", contracts.LeaseKey(ls.JobID, ls.Host), err)
	}
	return nil
}

// Update changes a live lease by compare-and-set.
func (l *Leases) Update(ctx context.Context, job, host string, change func(*contracts.Lease)) error {
	for try := 0; try < 10; try++ {
		ls, rev, err := l.Get(ctx, job, host)
		if err != nil {
			return err
		}
		change(&ls)
		data, _ := json.Marshal(ls)
		_, err = l.kv.Update(ctx, contracts.LeaseKey(job, host), data, rev)
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			continue
		}
		if err != nil {
			return fmt.Errorf("updating lease %s: %w", contracts.LeaseKey(job, host), err)
		}
		return nil
	}
	return fmt.Errorf("updating lease %s: too many concurrent changes", contracts.LeaseKey(job, host))
}

// All returns every lease, live or expired.
func (l *Leases) All(ctx context.Context) ([]contracts.Lease, error) {
	return l.list(ctx, "")
}

// OfJob returns every lease of a job, live or expired.
func (l *Leases) OfJob(ctx context.Context, job string) ([]contracts.Lease, error) {
	return l.list(ctx, job+".")
}

func (l *Leases) list(ctx context.Context, prefix string) ([]contracts.Lease, error) {
	keys, err := l.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing leases: %w", err)
	}
	var out []contracts.Lease
	for k := range keys.Keys() {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		e, err := l.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading lease %s: %w", k, err)
		}
		var ls contracts.Lease
		if json.Unmarshal(e.Value(), &ls) == nil {
			out = append(out, ls)
		}
	}
	return out, nil
}

// Delete revokes a lease; every service watching drops its connection.
func (l *Leases) Delete(ctx context.Context, job, host string) error {
	if err := l.kv.Delete(ctx, contracts.LeaseKey(job, host)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("revoking lease %s: %w", contracts.LeaseKey(job, host), err)
	}
	return nil
}

// Expired reports whether ls is past its expiry now.
func (l *Leases) Expired(ls contracts.Lease) bool { return !ls.Expires.After(l.now()) }

// WatchRevocations calls gone with the key of every lease that is deleted or purged,
// until ctx ends. A watcher the client library gives up on is made again from where
// it stopped (bus.Follow): a revocation missed would leave a job's connection open.
func (l *Leases) WatchRevocations(ctx context.Context, gone func(key string)) error {
	err := bus.Follow(ctx, l.kv, bus.FollowOptions{
		Remade: func(from uint64, why error) {
			logctx.From(ctx).Warn("lease watcher made again", "from_revision", from, "error", why)
		},
	}, func(e jetstream.KeyValueEntry) {
		if e.Operation() == jetstream.KeyValueDelete || e.Operation() == jetstream.KeyValuePurge {
			gone(e.Key())
		}
	})
	if err != nil {
		return fmt.Errorf("watching leases: %w", err)
	}
	return nil
}
