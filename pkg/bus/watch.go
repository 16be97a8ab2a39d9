package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// watchAttempt bounds the making of one watcher. The client library sends the
// consumer's creation with the watcher's own context, which lasts as long as the
// watch: a reply lost with a dying node would otherwise hold it for good.
const watchAttempt = 10 * time.Second

// remakePause is the wait before a watcher is made again.
const remakePause = time.Second

// FollowOptions says what Follow delivers.
type FollowOptions struct {
	// FromStart delivers every key's current value first, then the changes; without
	// it only the changes made after Follow was called are delivered.
	FromStart bool
	// IgnoreDeletes leaves out deletions and purges.
	IgnoreDeletes bool
	// Loaded, when set, is called once, when the current values are delivered (soon
	// after the start without FromStart).
	Loaded func()
	// Remade, when set, is called each time the watcher has been made again, with
	// the revision it resumes from and why the one before ended.
	Remade func(from uint64, why error)
}

// errWatcherClosed is why a watcher is made again when the library closed it.
var errWatcherClosed = errors.New("the watcher's channel was closed")

// Follow calls fn with the entries of kv, in revision order, until ctx ends or the
// connection is closed.
//
// The client library's watcher is an ordered consumer. When it cannot make its
// consumer again (a node died under it and the retry met an error the library does
// not retry), it closes its channel: a plain loop over it then ends quietly and the
// service goes on without the changes. Follow makes the watcher again, resuming at
// the revision after the last one delivered, so no change is missed or delivered
// twice; the making of each watcher is bounded by watchAttempt.
func Follow(ctx context.Context, kv jetstream.KeyValue, o FollowOptions, fn func(jetstream.KeyValueEntry)) error {
	var next uint64 // the revision to resume at; 0 for the current values of every key
	if !o.FromStart {
		last, err := lastRevision(ctx, kv)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		next = last + 1
	}
	loaded := o.Loaded
	var why error // why the last watcher ended, or the last making failed
	for {
		wctx, stop := context.WithCancel(ctx)
		w, err := makeWatcher(wctx, kv, o.IgnoreDeletes, next)
		if err == nil {
			if why != nil && o.Remade != nil {
				o.Remade(next, why)
			}
			err = func() error {
				for {
					select {
					case <-ctx.Done():
						return nil
					case e, ok := <-w.Updates():
						if !ok {
							return errWatcherClosed
						}
						if e == nil {
							if loaded != nil {
								loaded()
								loaded = nil
							}
							continue
						}
						next = e.Revision() + 1
						fn(e)
					}
				}
			}()
			_ = w.Stop()
		}
		stop()
		if ctx.Err() != nil || errors.Is(err, nats.ErrConnectionClosed) {
			return nil // the watch ends with its context, or with the connection closed by its owner
		}
		if !errors.Is(err, errWatcherClosed) && !transient(err) {
			return err
		}
		why = err
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(remakePause):
		}
	}
}

// makeWatcher makes a watcher of every key of kv, from revision from (0: the current
// values), within watchAttempt. The watcher lasts as long as ctx, which the caller
// cancels when this fails.
func makeWatcher(ctx context.Context, kv jetstream.KeyValue, ignoreDeletes bool, from uint64) (jetstream.KeyWatcher, error) {
	var opts []jetstream.WatchOpt
	if ignoreDeletes {
		opts = append(opts, jetstream.IgnoreDeletes())
	}
	if from > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(from))
	}
	type made struct {
		w   jetstream.KeyWatcher
		err error
	}
	done := make(chan made, 1)
	go func() {
		w, err := kv.WatchAll(ctx, opts...)
		done <- made{w, err}
	}()
	t := time.NewTimer(watchAttempt)
	defer t.Stop()
	select {
	case m := <-done:
		return m.w, m.err
	case <-t.C:
		// The caller's cancel stops the watcher should it come after all.
		return nil, fmt.Errorf("watching bucket %s: no answer in %s: %w", kv.Bucket(), watchAttempt, context.DeadlineExceeded)
	}
}

// lastRevision returns the revision of the newest entry of kv's stream.
func lastRevision(ctx context.Context, kv jetstream.KeyValue) (uint64, error) {
	st, err := retry(ctx, func(ctx context.Context) (jetstream.KeyValueStatus, error) {
		return kv.Status(ctx)
	})
	if err != nil {
		return 0, fmt.Errorf("reading bucket %s: %w", kv.Bucket(), err)
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, fmt.Errorf("reading bucket %s: status of type %T has no stream", kv.Bucket(), st)
	}
	return bs.StreamInfo().State.LastSeq, nil
}
