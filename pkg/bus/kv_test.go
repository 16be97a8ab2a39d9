package bus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestKeyValueWriteSurvivesALostReply: a write reaches the stream but its answer is
// lost with the connection (as when the node a client talks to is killed). The write
// must end, as the success it was, soon after the client reconnects, not at the
// caller's deadline; a create or compare-and-set must not be reported as a conflict
// with itself, nor be applied twice.
func TestKeyValueWriteSurvivesALostReply(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := startProxiedBucket(ctx, t, contracts.BucketJobs)
	p, kv, seen := b.p, b.kv, b.seen
	first, err := kv.Create(ctx, "job-a", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, key string
		value     []byte
		write     func(ctx context.Context, value []byte) (uint64, error)
		// conditional: a repeat would fail, so the write must land exactly once (a put
		// may be written again: the same value).
		conditional bool
	}{
		{"create", "job-b", []byte("b1"), func(ctx context.Context, v []byte) (uint64, error) { return kv.Create(ctx, "job-b", v) }, true},
		{"update", "job-a", []byte("v2"), func(ctx context.Context, v []byte) (uint64, error) { return kv.Update(ctx, "job-a", v, first) }, true},
		{"put", "job-c", []byte("c1"), func(ctx context.Context, v []byte) (uint64, error) { return kv.Put(ctx, "job-c", v) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p.mute(true)
			type result struct {
				rev uint64
				err error
			}
			done := make(chan result, 1)
			start := time.Now()
			go func() {
				wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				rev, err := tc.write(wctx, tc.value)
				done <- result{rev, err}
			}()
			// The write lands; its answer is being dropped.
			var landed jetstream.KeyValueEntry
			for landed == nil || !bytes.Equal(landed.Value(), tc.value) {
				if time.Since(start) > 10*time.Second {
					t.Fatal("the write did not reach the stream")
				}
				time.Sleep(20 * time.Millisecond)
				landed, _ = seen.Get(ctx, tc.key)
			}
			p.cut()
			p.mute(false)
			select {
			case r := <-done:
				if r.err != nil {
					t.Fatalf("write after a lost reply: %v (after %s)", r.err, time.Since(start).Round(time.Millisecond))
				}
				e, err := seen.Get(ctx, tc.key)
				if err != nil {
					t.Fatal(err)
				}
				if r.rev != e.Revision() || !bytes.Equal(e.Value(), tc.value) {
					t.Errorf("write returned revision %d; the key holds %q at %d", r.rev, e.Value(), e.Revision())
				}
				if tc.conditional && e.Revision() != landed.Revision() {
					t.Errorf("conditional write applied twice: revision %d, first landed at %d", e.Revision(), landed.Revision())
				}
				t.Logf("ended %s after it started", time.Since(start).Round(time.Millisecond))
			case <-time.After(15 * time.Second):
				t.Fatal("write still waiting 15 s after the reconnection: a lost reply held it")
			}
		})
	}
}

// TestKeyValueConflictStaysAConflict: a compare-and-set that loses to another writer is
// still reported as the conflict it is, at once.
func TestKeyValueConflictStaysAConflict(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	_, js := srv.Connect(t, "orchestrator")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := bus.WaitKeyValue(ctx, js, contracts.BucketJobs)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Create(ctx, "job-a", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "job-a", []byte("theirs"), rev); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "job-a", []byte("mine"), rev); !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		t.Errorf("stale update: %v, want a revision mismatch", err)
	}
	if _, err := kv.Create(ctx, "job-a", []byte("mine")); !errors.Is(err, jetstream.ErrKeyExists) {
		t.Errorf("create of an existing key: %v, want key exists", err)
	}
}

// proxiedBucket is a bucket of a server of its own, bound through a lossyProxy (kv)
// and directly (seen, to look at what landed).
type proxiedBucket struct {
	p        *lossyProxy
	nc       *nats.Conn
	kv, seen jetstream.KeyValue
	// reconnected receives a value each time nc has reconnected.
	reconnected chan struct{}
}

func startProxiedBucket(ctx context.Context, t *testing.T, bucket string) proxiedBucket {
	t.Helper()
	srv := bustest.Start(t, bus.Topology{})
	_, direct := srv.Connect(t, "observer")
	b := proxiedBucket{p: startLossyProxy(t, srv.Addr().String()), reconnected: make(chan struct{}, 10)}
	nc, err := nats.Connect("nats://"+b.p.addr(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.ReconnectHandler(func(*nats.Conn) {
			select {
			case b.reconnected <- struct{}{}:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	b.nc = nc
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if b.kv, err = bus.WaitKeyValue(ctx, js, bucket); err != nil {
		t.Fatal(err)
	}
	if b.seen, err = bus.WaitKeyValue(ctx, direct, bucket); err != nil {
		t.Fatal(err)
	}
	return b
}

// lossyProxy forwards TCP connections to a NATS server. While muted, what the server
// sends is held back, as by a node that stopped answering; cut closes every
// connection, and what was held back is lost with it (never a part of the stream:
// the client sees a prefix of what the server sent, as over a real connection).
type lossyProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	muted bool
	// budget, when positive, is how many more bytes the server may send before the
	// proxy mutes itself.
	budget int
	conns  []net.Conn
	// cuts counts the cuts: a reply held back across one is dropped.
	cuts int
}

func startLossyProxy(t *testing.T, target string) *lossyProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &lossyProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go p.serve()
	return p
}

func (p *lossyProxy) addr() string { return p.ln.Addr().String() }

func (p *lossyProxy) mute(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.muted, p.budget = on, 0
}

func (p *lossyProxy) isMuted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.muted
}

// muteAfter lets n more bytes from the server through, then mutes.
func (p *lossyProxy) muteAfter(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.budget = n
}

func (p *lossyProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.cuts++
}

func (p *lossyProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(server, client) }()
		go p.replies(client, server)
	}
}

// replies copies the server's bytes to the client, holding them back while muted.
func (p *lossyProxy) replies(client, server net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 {
			if !p.hold(n) {
				return
			}
			if _, werr := client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// hold counts n bytes against the budget (muting once it is spent, after them) and
// waits while muted. It reports false when the connection was cut meanwhile.
func (p *lossyProxy) hold(n int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	cuts := p.cuts
	if p.budget > 0 && !p.muted {
		p.budget -= n
		p.muted = p.budget <= 0
		return true
	}
	for p.muted && p.cuts == cuts {
		p.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		p.mu.Lock()
	}
	return p.cuts == cuts
}

// TestKeyValueListSurvivesALostReply: a listing of a bucket's keys whose answers stop
// coming mid-way (the node serving it dies) is an error when the caller's deadline
// comes first, never a shorter list; and once the client has reconnected it comes
// back whole, well before the caller's deadline.
func TestKeyValueListSurvivesALostReply(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b := startProxiedBucket(ctx, t, contracts.BucketLeases)
	p, kv, seen, reconnected := b.p, b.kv, b.seen, b.reconnected
	// About 150 bytes a key on the wire: the proxy's budget below runs out mid-list.
	const n = 3000
	for i := range n {
		if _, err := seen.Put(ctx, fmt.Sprintf("job-%04d.host", i), []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	list := func(ctx context.Context) (int, error) {
		l, err := kv.ListKeys(ctx)
		if err != nil {
			return 0, err
		}
		got := 0
		for range l.Keys() {
			got++
		}
		return got, nil
	}

	t.Run("deadline first", func(t *testing.T) {
		p.muteAfter(100 << 10)
		defer p.mute(false)
		lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		if got, err := list(lctx); err == nil {
			t.Fatalf("a listing cut short returned %d of %d keys and no error", got, n)
		} else {
			t.Logf("listing: %v", err)
		}
	})

	t.Run("reconnected", func(t *testing.T) {
		for len(reconnected) > 0 {
			<-reconnected
		}
		p.cut() // the muted connection of the subtest above
		select {
		case <-reconnected:
		case <-time.After(10 * time.Second):
			t.Fatalf("not reconnected: %v", b.nc.Status())
		}
		p.muteAfter(100 << 10)
		type result struct {
			n   int
			err error
		}
		done := make(chan result, 1)
		start := time.Now()
		go func() {
			lctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			got, err := list(lctx)
			done <- result{got, err}
		}()
		for !p.isMuted() {
			if time.Since(start) > 10*time.Second {
				t.Fatal("the listing did not start")
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(time.Second)
		p.cut()
		p.mute(false)
		select {
		case r := <-done:
			if r.err != nil || r.n != n {
				t.Fatalf("listing after a lost reply: %d of %d keys, %v", r.n, n, r.err)
			}
			t.Logf("whole listing %s after it started", time.Since(start).Round(time.Millisecond))
		case <-time.After(30 * time.Second):
			t.Fatal("listing still waiting 30 s after the reconnection: a lost reply held it")
		}
	})
}
