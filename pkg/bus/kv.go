package bus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// kvAttempt bounds one key-value request. A reply lost with a dying node (the request
// reached the stream, its answer did not come back) otherwise holds the caller until
// its own deadline: a connector step waited its whole two minutes on one lease write
// when a cluster node was killed.
const kvAttempt = 3 * time.Second

// listAttempt bounds one listing of a bucket's keys. A listing is a consumer on the
// bucket's stream; when the node serving it dies the consumer stalls, and the client
// library then ends the list at the caller's deadline as if it were whole.
const listAttempt = 10 * time.Second

// steadyKV is a bucket whose single-key calls and key listings ride out a stream
// electing a leader or a connection being re-established: each attempt gets kvAttempt
// (a listing listAttempt), and a timeout, "no responders" or a JetStream 503 is tried
// again until the caller's context ends.
//
// Writes stay exactly-once in effect. A put or delete repeated is the same write. A
// create or compare-and-set repeated after a lost reply finds its own write in place
// and reports it as the conflict it is to the server; the wrapper reads the key back
// and, when the stored value is the one it wrote (at a newer revision than the one
// it expected, for an update), returns that revision as the success it was.
type steadyKV struct {
	jetstream.KeyValue
}

// steady wraps a bucket handle; see steadyKV.
func steady(kv jetstream.KeyValue) jetstream.KeyValue { return steadyKV{kv} }

func (kv steadyKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return retry(ctx, func(ctx context.Context) (jetstream.KeyValueEntry, error) {
		return kv.KeyValue.Get(ctx, key)
	})
}

func (kv steadyKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return retry(ctx, func(ctx context.Context) (uint64, error) {
		return kv.KeyValue.Put(ctx, key, value)
	})
}

func (kv steadyKV) PutString(ctx context.Context, key string, value string) (uint64, error) {
	return kv.Put(ctx, key, []byte(value))
}

func (kv steadyKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	_, err := retry(ctx, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, kv.KeyValue.Delete(ctx, key, opts...)
	})
	return err
}

func (kv steadyKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	return kv.write(ctx, key, value, 0, jetstream.ErrKeyExists, func(ctx context.Context) (uint64, error) {
		return kv.KeyValue.Create(ctx, key, value, opts...)
	})
}

func (kv steadyKV) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	return kv.write(ctx, key, value, revision, jetstream.ErrKeyRevisionMismatch, func(ctx context.Context) (uint64, error) {
		return kv.KeyValue.Update(ctx, key, value, revision)
	})
}

// ListKeys lists the bucket's keys; see list.
func (kv steadyKV) ListKeys(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyLister, error) {
	return kv.list(ctx, func(ctx context.Context) (jetstream.KeyLister, error) {
		return kv.KeyValue.ListKeys(ctx, opts...)
	})
}

// ListKeysFiltered lists the bucket's keys matching filters; see list.
func (kv steadyKV) ListKeysFiltered(ctx context.Context, filters ...string) (jetstream.KeyLister, error) {
	return kv.list(ctx, func(ctx context.Context) (jetstream.KeyLister, error) {
		return kv.KeyValue.ListKeysFiltered(ctx, filters...)
	})
}

// list reads a whole listing within one attempt of listAttempt and hands it out from
// memory (keys only). The client library's lister closes its channel when its context
// ends, the same as when the list is complete: a listing cut short that way is an
// error here, tried again while ctx lasts, never a shorter list.
func (kv steadyKV) list(ctx context.Context, open func(context.Context) (jetstream.KeyLister, error)) (jetstream.KeyLister, error) {
	keys, err := retryFor(ctx, listAttempt, func(ctx context.Context) ([]string, error) {
		l, err := open(ctx)
		if err != nil {
			return nil, err
		}
		defer func() { _ = l.Stop() }()
		var keys []string
		for k := range l.Keys() {
			keys = append(keys, k)
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("listing keys: cut short after %d: %w", len(keys), err)
		}
		return keys, nil
	})
	if err != nil {
		return nil, err
	}
	l := make(keyList, len(keys))
	for _, k := range keys {
		l <- k
	}
	close(l)
	return l, nil
}

// keyList is a finished listing: a closed channel holding every key.
type keyList chan string

func (l keyList) Keys() <-chan string { return l }
func (l keyList) Stop() error         { return nil }

// write runs a conditional write (create, compare-and-set). When an attempt after an
// uncertain one (no answer) meets conflict, the earlier attempt may have landed: the
// key is read back, and the write counts as done when it holds value at a revision
// past expected.
func (kv steadyKV) write(ctx context.Context, key string, value []byte, expected uint64, conflict error, op func(context.Context) (uint64, error)) (uint64, error) {
	uncertain := false
	return retry(ctx, func(ctx context.Context) (uint64, error) {
		rev, err := op(ctx)
		if err != nil && uncertain && errors.Is(err, conflict) {
			if e, gerr := kv.KeyValue.Get(ctx, key); gerr == nil && e.Revision() > expected && bytes.Equal(e.Value(), value) {
				return e.Revision(), nil
			}
		}
		uncertain = uncertain || transient(err)
		return rev, err
	})
}

// retry repeats op, each attempt bounded by kvAttempt, while it fails in a way a later
// attempt can get past and ctx lasts. The last error is returned as it came.
func retry[T any](ctx context.Context, op func(context.Context) (T, error)) (T, error) {
	return retryFor(ctx, kvAttempt, op)
}

// retryFor is retry with attempts of at most per.
func retryFor[T any](ctx context.Context, per time.Duration, op func(context.Context) (T, error)) (T, error) {
	for {
		attempt, cancel := context.WithTimeout(ctx, per)
		v, err := op(attempt)
		cancel()
		if err == nil || !transient(err) || ctx.Err() != nil {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}
