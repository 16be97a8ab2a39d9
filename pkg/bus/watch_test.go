package bus_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/nats-io/nats.go/jetstream"
)

// givingUpKV is a bucket whose latest watcher the test can stop. A stopped watcher
// closes its channel just as it does when the client library gives up on it (its
// subscription ends, and with it the channel).
type givingUpKV struct {
	jetstream.KeyValue
	// calls, when set, receives the context of every watcher's making.
	calls    chan context.Context
	mu       sync.Mutex
	watchers []jetstream.KeyWatcher
}

func (k *givingUpKV) WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	if k.calls != nil {
		k.calls <- ctx
	}
	w, err := k.KeyValue.WatchAll(ctx, opts...)
	if err == nil {
		k.mu.Lock()
		k.watchers = append(k.watchers, w)
		k.mu.Unlock()
	}
	return w, err
}

func (k *givingUpKV) giveUp(t *testing.T) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.watchers) == 0 {
		t.Fatal("no watcher made")
	}
	_ = k.watchers[len(k.watchers)-1].Stop()
}

func (k *givingUpKV) made() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.watchers)
}

// follower runs bus.Follow and records what it delivers as "op key=value@revision".
type follower struct {
	got    chan string
	loaded chan struct{}
	remade chan error
	done   chan error
}

func follow(ctx context.Context, kv jetstream.KeyValue, o bus.FollowOptions) *follower {
	f := &follower{got: make(chan string, 100), loaded: make(chan struct{}), remade: make(chan error, 10), done: make(chan error, 1)}
	o.Loaded = func() { close(f.loaded) }
	o.Remade = func(_ uint64, why error) { f.remade <- why }
	go func() {
		f.done <- bus.Follow(ctx, kv, o, func(e jetstream.KeyValueEntry) {
			f.got <- fmt.Sprintf("%s %s=%s@%d", e.Operation(), e.Key(), e.Value(), e.Revision())
		})
	}()
	return f
}

// expect fails unless the next deliveries are want, in order, and then nothing more
// comes for a moment.
func (f *follower) expect(t *testing.T, want ...string) {
	t.Helper()
	var got []string
	for range want {
		select {
		case g := <-f.got:
			got = append(got, g)
		case <-time.After(20 * time.Second):
			t.Fatalf("delivered %q, want %q", got, want)
		}
	}
	select {
	case g := <-f.got:
		got = append(got, g)
	case <-time.After(300 * time.Millisecond):
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("delivered\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func (f *follower) waitRemade(t *testing.T) error {
	t.Helper()
	select {
	case why := <-f.remade:
		return why
	case <-time.After(30 * time.Second):
		t.Fatal("the watcher was not made again")
		return nil
	}
}

// TestFollowMakesTheWatcherAgain: when the client library gives up on a watcher (its
// channel closes), Follow makes it again from the revision after the last delivered:
// the changes made meanwhile come, each once and in order, and nothing before them
// comes twice. Both with the current values first and with changes only.
func TestFollowMakesTheWatcherAgain(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	_, js := srv.Connect(t, "orchestrator")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	raw, err := bus.WaitKeyValue(ctx, js, contracts.BucketLeases)
	if err != nil {
		t.Fatal(err)
	}
	put := func(k, v string) uint64 {
		t.Helper()
		rev, err := raw.Put(ctx, k, []byte(v))
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	del := func(k string) {
		t.Helper()
		if err := raw.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("from the start", func(t *testing.T) {
		r1, r2 := put("a.h", "1"), put("b.h", "1")
		r3 := put("a.h", "2") // only a's current value is delivered at the start
		kv := &givingUpKV{KeyValue: raw}
		fctx, stop := context.WithCancel(ctx)
		f := follow(fctx, kv, bus.FollowOptions{FromStart: true})
		f.expect(t, fmt.Sprintf("KeyValuePutOp b.h=1@%d", r2), fmt.Sprintf("KeyValuePutOp a.h=2@%d", r3))
		<-f.loaded
		_ = r1
		r4 := put("c.h", "1")
		f.expect(t, fmt.Sprintf("KeyValuePutOp c.h=1@%d", r4))

		kv.giveUp(t)
		r5 := put("d.h", "1")
		del("b.h")
		r6 := r5 + 1
		if why := f.waitRemade(t); why == nil {
			t.Error("made again without a reason")
		}
		f.expect(t, fmt.Sprintf("KeyValuePutOp d.h=1@%d", r5), fmt.Sprintf("KeyValueDeleteOp b.h=@%d", r6))
		if kv.made() != 2 {
			t.Errorf("%d watchers made, want 2", kv.made())
		}
		stop()
		if err := <-f.done; err != nil {
			t.Errorf("Follow ended with %v", err)
		}
	})

	t.Run("changes only", func(t *testing.T) {
		put("e.h", "1")
		kv := &givingUpKV{KeyValue: raw}
		fctx, stop := context.WithCancel(ctx)
		defer stop()
		f := follow(fctx, kv, bus.FollowOptions{IgnoreDeletes: true})
		<-f.loaded
		// Given up before anything was delivered: it resumes after the revision the
		// bucket had when Follow started.
		kv.giveUp(t)
		r1 := put("f.h", "1")
		del("e.h")
		r2 := put("g.h", "1")
		f.waitRemade(t)
		f.expect(t, fmt.Sprintf("KeyValuePutOp f.h=1@%d", r1), fmt.Sprintf("KeyValuePutOp g.h=1@%d", r2))
	})
}

// TestFollowBoundsTheMaking: a watcher whose making gets no answer (the reply lost
// with a dying node) is given up after a while and made again, rather than waited
// for as long as the watch lasts.
func TestFollowBoundsTheMaking(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out one attempt")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b := startProxiedBucket(ctx, t, contracts.BucketLeases)
	rev, err := b.seen.Put(ctx, "a.h", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	kv := &givingUpKV{KeyValue: b.kv, calls: make(chan context.Context, 10)}
	b.p.mute(true)
	f := follow(ctx, kv, bus.FollowOptions{FromStart: true})
	first := <-kv.calls
	select {
	case <-first.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("a making without an answer still waited for after 30 s")
	}
	// The connection the answer was held back on goes: the answer is lost with it.
	b.p.cut()
	b.p.mute(false)
	if why := f.waitRemade(t); !errors.Is(why, context.DeadlineExceeded) {
		t.Errorf("made again because of %v, want a deadline", why)
	}
	f.expect(t, fmt.Sprintf("KeyValuePutOp a.h=1@%d", rev))
	<-f.loaded
}

// TestFollowEndsWithTheConnection: a connection closed by its owner (a service
// shutting down) ends the watch, without an error and without a remake.
func TestFollowEndsWithTheConnection(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	nc, js := srv.Connect(t, "orchestrator")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv, err := bus.WaitKeyValue(ctx, js, contracts.BucketLeases)
	if err != nil {
		t.Fatal(err)
	}
	f := follow(ctx, kv, bus.FollowOptions{FromStart: true})
	<-f.loaded
	nc.Close()
	select {
	case err := <-f.done:
		if err != nil {
			t.Errorf("Follow ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Follow still running 10 s after its connection was closed")
	}
	if len(f.remade) > 0 {
		t.Errorf("made again after the connection was closed: %v", <-f.remade)
	}
}
