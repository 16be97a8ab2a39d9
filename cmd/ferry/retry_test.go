package main

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/nats-io/nats.go"
)

// ferryApp runs the command line like ferry, on an app that configure adjusts first.
func ferryApp(t *testing.T, env map[string]string, configure func(*app), args ...string) result {
	t.Helper()
	var out, errb syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := newApp(&out, &errb, func(k string) string { return env[k] })
	configure(a)
	code := a.run(ctx, args)
	return result{code, out.String(), errb.String()}
}

// respondOn answers requests on subject with answer(n) for the n-th one (from 1); a
// nil answer leaves that request unanswered, as if its answer were lost with a node.
// It stops answering when the test ends and returns the count of requests.
func respondOn(t *testing.T, nc *nats.Conn, subject string, answer func(n int32) any) *atomic.Int32 {
	t.Helper()
	var n atomic.Int32
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		v := answer(n.Add(1))
		if v == nil {
			return
		}
		data, _ := json.Marshal(v)
		if err := m.Respond(data); err != nil {
			t.Error(err)
		}
	})
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sub.Unsubscribe()
		_ = nc.Flush()
	})
	return &n
}

// cliAsked reports whether the CLI's connection has sent a request yet.
func cliAsked(t *testing.T, srv *bustest.Server) bool {
	t.Helper()
	conns, err := srv.Connz(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range conns.Conns {
		if c.Name == "ferry-cli" && c.InMsgs > 0 {
			return true
		}
	}
	return false
}

func unavailableReply() contracts.SubmitReply {
	return contracts.SubmitReply{Error: &contracts.APIError{Code: "unavailable", Message: "nats: no response from stream"}}
}

// TestRequestRidesOutFailover checks that a request asks again while the API fails
// over (no responders, "unavailable", a lost answer), within --timeout, and that it
// does not repeat what a retry cannot mend.
func TestRequestRidesOutFailover(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	env := map[string]string{"FERRY_NATS_URL": srv.URL}
	nc, _ := srv.Connect(t, "test-api")
	update := func(id string, flags ...string) []string {
		return append([]string{"update", "--id", id, "--from", "op-pc", "--to", "cust-1", "--dest", "/opt/app", "a.jar"}, flags...)
	}

	t.Run("no API until the budget ends", func(t *testing.T) {
		start := time.Now()
		r := ferry(t, env, "job", "get", "job-42", "--timeout", "2s")
		took := time.Since(start)
		if r.code != exitFail || !strings.Contains(r.stderr, "no ferry API answers on "+contracts.SubjectAPIGet) {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
		if took < 2*time.Second || took > 6*time.Second {
			t.Errorf("gave up after %s, want about --timeout 2s", took)
		}
	})

	t.Run("API appears after the first request", func(t *testing.T) {
		done := make(chan result, 1)
		go func() { done <- ferry(t, env, update("late-1")...) }()
		// The CLI asks while nothing answers; the API appears a second later, as an
		// orchestrator reconnecting to another node does.
		for !cliAsked(t, srv) {
			select {
			case r := <-done:
				t.Fatalf("ferry ended before asking: exit %d, stderr %q", r.code, r.stderr)
			case <-time.After(10 * time.Millisecond):
			}
		}
		var r result
		select {
		case r = <-done:
			t.Fatalf("ferry gave up while the API was away: exit %d, stderr %q", r.code, r.stderr)
		case <-time.After(time.Second):
		}
		n := respondOn(t, nc, contracts.SubjectAPISubmit, func(int32) any { return contracts.SubmitReply{JobID: "late-1"} })
		r = <-done
		if r.code != 0 || strings.TrimSpace(r.stdout) != "late-1" || r.stderr != "" {
			t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		if n.Load() != 1 {
			t.Errorf("the API got %d requests, want 1", n.Load())
		}
	})

	t.Run("unavailable, then an answer", func(t *testing.T) {
		// The first try's store may have landed before the API gave up on it: the repeat
		// is answered Duplicate, for the job this very command submitted.
		n := respondOn(t, nc, contracts.SubjectAPISubmit, func(n int32) any {
			if n == 1 {
				return unavailableReply()
			}
			return contracts.SubmitReply{JobID: "flaky-1", Duplicate: true}
		})
		r := ferry(t, env, update("flaky-1", "--timeout", "5s")...)
		if r.code != 0 || strings.TrimSpace(r.stdout) != "flaky-1" {
			t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		if strings.Contains(r.stderr, "existed already; nothing new was submitted") || !strings.Contains(r.stderr, "an unanswered try got through") {
			t.Errorf("stderr %q", r.stderr)
		}
		if n.Load() != 2 {
			t.Errorf("the API got %d requests, want 2", n.Load())
		}
	})

	t.Run("unavailable until the budget ends", func(t *testing.T) {
		n := respondOn(t, nc, contracts.SubjectAPISubmit, func(int32) any { return unavailableReply() })
		r := ferry(t, env, update("down-1", "--timeout", "1s")...)
		if r.code != exitFail || !strings.Contains(r.stderr, "ferry: nats: no response from stream (unavailable)") {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
		if n.Load() < 2 {
			t.Errorf("the API got %d requests, want repeats", n.Load())
		}
	})

	t.Run("lost answer", func(t *testing.T) {
		n := respondOn(t, nc, contracts.SubjectAPISubmit, func(n int32) any {
			if n == 1 {
				return nil
			}
			return contracts.SubmitReply{JobID: "lost-1", Duplicate: true}
		})
		r := ferryApp(t, env, func(a *app) { a.attemptLimit = 300 * time.Millisecond }, update("lost-1", "--timeout", "5s")...)
		if r.code != 0 || strings.TrimSpace(r.stdout) != "lost-1" || strings.Contains(r.stderr, "existed already; nothing new") {
			t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		if n.Load() != 2 {
			t.Errorf("the API got %d requests, want 2", n.Load())
		}
	})

	t.Run("duplicate at the first answer", func(t *testing.T) {
		respondOn(t, nc, contracts.SubjectAPISubmit, func(int32) any { return contracts.SubmitReply{JobID: "old-1", Duplicate: true} })
		r := ferry(t, env, update("old-1")...)
		if r.code != 0 || !strings.Contains(r.stderr, "ferry: job old-1 existed already; nothing new was submitted") {
			t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("final answers are not repeated", func(t *testing.T) {
		gets := respondOn(t, nc, contracts.SubjectAPIGet, func(int32) any {
			return contracts.JobReply{Error: &contracts.APIError{Code: "not_found", Message: "no job job-7"}}
		})
		submits := respondOn(t, nc, contracts.SubjectAPISubmit, func(int32) any {
			return contracts.SubmitReply{Error: &contracts.APIError{Code: "invalid", Message: "invalid job request"}}
		})
		if r := ferry(t, env, "job", "get", "job-7"); r.code != exitFail || !strings.Contains(r.stderr, "no job job-7 (not_found)") {
			t.Errorf("job get: exit %d, stderr %q", r.code, r.stderr)
		}
		if r := ferry(t, env, update("bad-1")...); r.code != exitUsage || !strings.Contains(r.stderr, "invalid job request (invalid)") {
			t.Errorf("update: exit %d, stderr %q", r.code, r.stderr)
		}
		if gets.Load() != 1 || submits.Load() != 1 {
			t.Errorf("the API got %d get and %d submit requests, want 1 each", gets.Load(), submits.Load())
		}
	})
}
