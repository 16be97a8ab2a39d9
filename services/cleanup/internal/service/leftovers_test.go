package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/worker"
)

// hostsFunc is HostDialer on local directories (the sweep against real sshd is
// cmd/ferry's TestSystemUpdateLeftoversOnAHostOutOfReach); it counts open sessions.
type hostsFunc struct {
	open func(host string) error
	mu   sync.Mutex
	n    int
}

func (h *hostsFunc) Open(_ context.Context, host string) (Remote, func(), error) {
	if err := h.open(host); err != nil {
		return nil, nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n++
	return &localRemote{}, func() { h.mu.Lock(); h.n--; h.mu.Unlock() }, nil
}

// startLeftoverStore is the leftovers bucket of a server of the test's own, as
// cleanup's user binds it.
func startLeftoverStore(t *testing.T) *LeftoverStore {
	t.Helper()
	srv := bustest.Start(t, bus.Topology{})
	_, js := srv.Connect(t, "cleanup")
	kv, err := js.KeyValue(context.Background(), contracts.BucketLeftovers)
	if err != nil {
		t.Fatal(err)
	}
	return &LeftoverStore{KV: kv}
}

// The sweep removes the leftovers of hosts that answer and forgets them; it keeps
// those of hosts still out of reach until they are too old; it drops records of hosts
// no longer in the inventory and records naming anything but a job's temporary files.
func TestLeftoverSweep(t *testing.T) {
	ctx := context.Background()
	store := startLeftoverStore(t)
	kv := store.KV
	dir := t.TempDir()
	mine, other, own := filepath.Join(dir, contracts.TempName("a.tar.zst", "job-1")), filepath.Join(dir, contracts.TempName("a.tar.zst", "job-9")), filepath.Join(dir, "app.conf")
	for _, p := range []string{mine, other, own} {
		write(t, p, "x")
	}
	if err := os.MkdirAll(filepath.Join(dir, contracts.IncomingName("job-1"), "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	keep := func(job, host string, since time.Time, names ...string) {
		t.Helper()
		err := store.Keep(ctx, contracts.PendingLeftover{Schema: contracts.SchemaPendingLeftover, JobID: job, Since: since, Reason: "refused",
			Leftover: contracts.Leftover{Host: host, Dir: dir, Names: names}})
		if err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-time.Hour)
	keep("job-1", "up", time.Now(), filepath.Base(mine), contracts.IncomingName("job-1"))
	keep("job-2", "down", old, contracts.TempName("b", "job-2"))
	keep("job-2", "down", time.Now(), contracts.TempName("b", "job-2")) // again: keeps its Since
	keep("job-3", "gone", time.Now(), contracts.TempName("c", "job-3"))
	keep("job-4", "up", time.Now(), "app.conf")
	if _, err := kv.Put(ctx, contracts.LeaseKey("job-5", "up"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}

	hosts := &hostsFunc{open: func(host string) error {
		switch host {
		case "down":
			return worker.Retryable(contracts.CodeUnreachable, errors.New("connection refused"))
		case "gone":
			return worker.Permanent(contracts.CodeNotFound, errors.New("no host gone in the inventory"))
		}
		return nil
	}}
	sw := &LeftoverSweeper{Store: store, Hosts: hosts, Log: slog.New(slog.DiscardHandler)}
	res, err := sw.Sweep(ctx)
	if err != nil || res != (SweepResult{Removed: 1, Pending: 1, Dropped: 3}) {
		t.Fatalf("sweep: %+v, %v", res, err)
	}
	if hosts.n != 0 {
		t.Errorf("%d sessions left open", hosts.n)
	}
	if got := names(t, dir); !slices.Equal(got, []string{filepath.Base(other), "app.conf"}) {
		t.Errorf("left %v", got)
	}
	keys := func() []string {
		l, err := kv.ListKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ks []string
		for k := range l.Keys() {
			ks = append(ks, k)
		}
		return ks
	}
	if got := keys(); !slices.Equal(got, []string{contracts.LeaseKey("job-2", "down")}) {
		t.Errorf("records after the sweep: %v", got)
	}
	e, err := kv.Get(ctx, contracts.LeaseKey("job-2", "down"))
	if err != nil {
		t.Fatal(err)
	}
	var p contracts.PendingLeftover
	if err := json.Unmarshal(e.Value(), &p); err != nil || !p.Since.Equal(old) {
		t.Errorf("record kept again: since %v, want %v (%v)", p.Since, old, err)
	}

	// Still out of reach after MaxAge: given up.
	sw.MaxAge = time.Minute
	if res, err := sw.Sweep(ctx); err != nil || res != (SweepResult{Dropped: 1}) {
		t.Errorf("sweep past MaxAge: %+v, %v", res, err)
	}
	if got := keys(); len(got) != 0 {
		t.Errorf("records left: %v", got)
	}
}

func TestKeepable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{worker.Retryable(contracts.CodeUnreachable, errors.New("refused")), true},
		{worker.Permanent(contracts.CodeHostKey, errors.New("changed")), true},
		{worker.Permanent(contracts.CodeNotFound, errors.New("unknown host")), false},
		{worker.Permanent(contracts.CodeInvalidCommand, errors.New("outside roots")), false},
		{context.DeadlineExceeded, true},
		{errors.New("permission denied"), false},
	} {
		if got := keepable(tc.err); got != tc.want {
			t.Errorf("keepable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// A host that does not answer holds only its own turn: the sweep tries the others
// meanwhile (here, no host's dial ends until every host is being dialled).
func TestLeftoverSweepTriesHostsAtOnce(t *testing.T) {
	ctx := context.Background()
	store := startLeftoverStore(t)
	const n = 3
	for i := range n {
		job, host := fmt.Sprintf("job-%d", i), fmt.Sprintf("hung-%d", i)
		err := store.Keep(ctx, contracts.PendingLeftover{Schema: contracts.SchemaPendingLeftover, JobID: job, Since: time.Now(), Reason: "refused",
			Leftover: contracts.Leftover{Host: host, Dir: t.TempDir(), Names: []string{contracts.TempName("a", job)}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	var dialling sync.WaitGroup
	dialling.Add(n)
	all := make(chan struct{})
	go func() { dialling.Wait(); close(all) }()
	hosts := &hostsFunc{open: func(host string) error {
		dialling.Done()
		select {
		case <-all:
		case <-time.After(20 * time.Second):
			t.Errorf("%s: the other hosts were not tried while it hung", host)
		}
		return worker.Retryable(contracts.CodeUnreachable, errors.New("i/o timeout"))
	}}
	sw := &LeftoverSweeper{Store: store, Hosts: hosts, Log: slog.New(slog.DiscardHandler)}
	if res, err := sw.Sweep(ctx); err != nil || res != (SweepResult{Pending: n}) {
		t.Fatalf("sweep: %+v, %v", res, err)
	}
}
