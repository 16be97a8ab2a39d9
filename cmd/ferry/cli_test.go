package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// syncBuffer is a bytes.Buffer safe for the writers of `ferry dev`.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type result struct {
	code           int
	stdout, stderr string
}

// ferry runs the command line in process with env as its environment.
func ferry(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errb syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, args, &out, &errb, func(k string) string { return env[k] })
	return result{code, out.String(), errb.String()}
}

func TestValidationNamesFields(t *testing.T) {
	// Nothing listens on the URL: validation must fail before anything is sent.
	nowhere := map[string]string{"FERRY_NATS_URL": "nats://127.0.0.1:1"}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"update without --from", []string{"update", "--files", "a.jar", "--to", "cust-1", "--dest", "/opt/app"},
			[]string{"update.from (--from)", "is required"}},
		{"update with a climbing file", []string{"update", "--from", "op", "--to", "cust-1", "--dest", "/opt/app", "--files", "../etc/passwd"},
			[]string{"update.files[0] (--files)", "'..'"}},
		{"update with bad compression", []string{"update", "--from", "op", "--to", "cust-1", "--dest", "d", "--compression", "xz", "a.jar"},
			[]string{"update.compression (--compression)"}},
		{"db backup without --db", []string{"backup", "db", "--from", "cust-1", "--to", "op"},
			[]string{"db_backup.database (--db)"}},
		{"db backup with a bad port", []string{"backup", "db", "--from", "cust-1", "--db", "shop", "--db-port", "70000", "--to", "op"},
			[]string{"db_backup.db_port (--db-port)"}},
		{"log backup with a bad size", []string{"backup", "logs", "--from", "cust-1", "--paths", "/var/log/*.log", "--to", "op", "--max-size", "lots"},
			[]string{"log_backup.max_size (--max-size)"}},
		{"log backup without paths", []string{"backup", "logs", "--from", "cust-1", "--to", "op"},
			[]string{"log_backup.paths (--paths)"}},
		{"bad job id", []string{"update", "--id", "no/slashes", "--from", "op", "--to", "cust-1", "--dest", "d", "a.jar"},
			[]string{"id (--id)"}},
		{"job get with a bad id", []string{"job", "get", "../x"}, []string{"id"}},
		{"job cancel with a bad id", []string{"job", "cancel", "a b"}, []string{"job_id"}},
		{"unknown flag", []string{"job", "list", "--colour"}, []string{"unknown flag"}},
		{"missing argument", []string{"job", "get"}, []string{"accepts 1 arg"}},
		{"bad output", []string{"job", "list", "-o", "yaml"}, []string{"table or json"}},
		{"missing password file", []string{"job", "list", "--nats-password-file", "/nonexistent/pw"}, []string{"--nats-password-file", "/nonexistent/pw"}},
		{"password and password file", []string{"job", "list", "--nats-password", "x", "--nats-password-file", "/etc/hostname"}, []string{"set one, not both"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := ferry(t, nowhere, c.args...)
			if r.code != exitUsage {
				t.Errorf("exit %d, want %d; stderr:\n%s", r.code, exitUsage, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
		})
	}
}

func TestFormatting(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 512 << 20: "512 MiB", 1 << 30: "1.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	if got := progressLine(contracts.Progress{Step: "push", Done: 512 << 20, Total: 1 << 30}); got != "push 512 MiB / 1.0 GiB" {
		t.Errorf("progressLine = %q", got)
	}
	ev := contracts.JobEvent{JobID: "j1", Kind: contracts.EventStepStarted, Step: "connect-operator", Attempt: 1}
	if got := jobEventLine(ev); got != "step connect-operator started (attempt 1)" {
		t.Errorf("jobEventLine = %q", got)
	}
	ev = contracts.JobEvent{JobID: "j1", Kind: contracts.EventStepRetrying, Step: "pull", Attempt: 2,
		Error: &contracts.StepError{Code: "unreachable", Message: "dial tcp: refused"}}
	if got := jobEventLine(ev); got != "step pull failed (attempt 2): unreachable: dial tcp: refused; retrying" {
		t.Errorf("jobEventLine = %q", got)
	}
}

// fakeAPI answers the orchestrator's API subjects with canned replies, and plays a
// job's events when a job is submitted.
type fakeAPI struct {
	t  *testing.T
	js jetstream.JetStream
	// outcome of submitted jobs: succeeded, failed, or "" for no events at all.
	outcome contracts.JobState

	mu        sync.Mutex
	submitted []contracts.JobRequest
	cancelled []contracts.CancelRequest
}

var testJob = contracts.Job{
	Schema: contracts.SchemaJob, ID: "job-42", Action: contracts.ActionUpdate, State: contracts.JobRunning,
	Created: time.Now().Add(-time.Minute), Updated: time.Now(), TraceID: "0af7651916cd43dd8448eb211c80319c",
	Steps: []contracts.Step{
		{Name: "connect-operator", Service: contracts.ServiceConnector, Op: contracts.OpConnect, State: contracts.StepDone, Attempt: 2,
			Started: time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC), Ended: time.Date(2025, 3, 1, 10, 0, 2, 500e6, time.UTC), Elapsed: 120 * time.Millisecond},
		{Name: "push", Service: contracts.ServiceTransfer, Op: contracts.OpPush, State: contracts.StepRunning, Attempt: 1,
			Started: time.Now().Add(-3 * time.Second), Bytes: 64 << 20, Elapsed: 2 * time.Second},
		{Name: "close", Service: contracts.ServiceConnector, Op: contracts.OpClose, State: contracts.StepPending, Always: true},
	},
}

func startFakeAPI(t *testing.T, srv *bustest.Server, outcome contracts.JobState) *fakeAPI {
	nc, js := srv.Connect(t, "fake-api")
	f := &fakeAPI{t: t, js: js, outcome: outcome}
	reply := func(m *nats.Msg, v any) {
		data, _ := json.Marshal(v)
		if err := m.Respond(data); err != nil {
			t.Error(err)
		}
	}
	subscribe := func(subject string, h nats.MsgHandler) {
		if _, err := nc.Subscribe(subject, h); err != nil {
			t.Fatal(err)
		}
	}
	subscribe(contracts.SubjectAPISubmit, func(m *nats.Msg) {
		req, err := contracts.DecodeJobRequest(m.Data)
		if err != nil {
			var ve *contracts.ValidationError
			if errors.As(err, &ve) {
				reply(m, contracts.SubmitReply{Error: &contracts.APIError{Code: "invalid", Message: "invalid job request", Fields: ve.Fields}})
				return
			}
		}
		if req.Ticket == "refuse" {
			reply(m, contracts.SubmitReply{Error: &contracts.APIError{Code: "invalid", Message: "invalid job request",
				Fields: []contracts.FieldError{{Field: "update.to", Problem: `host "cust-9" is not in the inventory`}}}})
			return
		}
		f.mu.Lock()
		f.submitted = append(f.submitted, req)
		f.mu.Unlock()
		reply(m, contracts.SubmitReply{JobID: req.ID})
		if f.outcome != "" {
			go f.play(req.ID)
		}
	})
	subscribe(contracts.SubjectAPIGet, func(m *nats.Msg) {
		var req contracts.GetRequest
		_ = json.Unmarshal(m.Data, &req)
		if req.JobID != testJob.ID {
			reply(m, contracts.JobReply{Error: &contracts.APIError{Code: "not_found", Message: "no job " + req.JobID}})
			return
		}
		j := testJob
		reply(m, contracts.JobReply{Job: &j})
	})
	subscribe(contracts.SubjectAPIList, func(m *nats.Msg) {
		var req contracts.ListRequest
		_ = json.Unmarshal(m.Data, &req)
		jobs := []contracts.JobSummary{
			{ID: "job-42", Action: contracts.ActionUpdate, State: contracts.JobRunning, Step: "push", Created: time.Now()},
			{ID: "job-41", Action: contracts.ActionDBBackup, State: contracts.JobFailed, Created: time.Now().Add(-time.Hour),
				Failure: &contracts.JobFailure{Step: "dump", Code: "auth_failed", Message: "password refused"}},
		}
		if req.State != "" {
			jobs = jobs[:0]
		}
		reply(m, contracts.ListReply{Jobs: jobs})
	})
	subscribe(contracts.SubjectAPICancel, func(m *nats.Msg) {
		var req contracts.CancelRequest
		_ = json.Unmarshal(m.Data, &req)
		f.mu.Lock()
		f.cancelled = append(f.cancelled, req)
		f.mu.Unlock()
		j := testJob
		j.ID, j.State, j.CancelRequested, j.CancelReason = req.JobID, contracts.JobCancelling, true, req.Reason
		reply(m, contracts.JobReply{Job: &j})
	})
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return f
}

// play publishes the events of a job that ends in f.outcome.
func (f *fakeAPI) play(job string) {
	seq := 0
	pub := func(subject string, v any) {
		seq++
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := bus.Publish(ctx, f.js, subject, v, fmt.Sprintf("%s/test/%d", job, seq), job); err != nil {
			f.t.Error(err)
		}
	}
	ev := func(kind contracts.JobEventKind, state contracts.JobState, step string) contracts.JobEvent {
		return contracts.JobEvent{Schema: contracts.SchemaJobEvent, JobID: job, Seq: seq, Action: contracts.ActionUpdate,
			Kind: kind, State: state, Step: step, Attempt: 1, Time: time.Now()}
	}
	pub(contracts.JobEventSubject(job), ev(contracts.EventAccepted, contracts.JobPending, ""))
	pub(contracts.JobEventSubject(job), ev(contracts.EventStepStarted, contracts.JobRunning, "connect-operator"))
	pub(contracts.StepEventSubject(job), contracts.StepEvent{Schema: contracts.SchemaStepEvent, JobID: job, Step: "connect-operator", Kind: contracts.StepSucceeded})
	pub(contracts.JobEventSubject(job), ev(contracts.EventStepSucceeded, contracts.JobRunning, "connect-operator"))
	pub(contracts.JobEventSubject(job), ev(contracts.EventStepStarted, contracts.JobRunning, "push"))
	pub(contracts.ProgressSubject(job), contracts.Progress{Schema: contracts.SchemaProgress, JobID: job, Step: "push", Done: 512 << 20, Total: 1 << 30})
	fin := ev(contracts.EventFinished, f.outcome, "")
	if f.outcome == contracts.JobFailed {
		e := ev(contracts.EventStepFailed, contracts.JobClosing, "push")
		e.Error = &contracts.StepError{Code: contracts.CodeVerify, Message: "sha256 mismatch"}
		pub(contracts.JobEventSubject(job), e)
		fin.Failure = &contracts.JobFailure{Step: "push", Code: contracts.CodeVerify, Message: "sha256 mismatch"}
	} else {
		pub(contracts.JobEventSubject(job), ev(contracts.EventStepSucceeded, contracts.JobRunning, "push"))
	}
	pub(contracts.JobEventSubject(job), fin)
}

func TestAgainstFakeAPI(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	env := map[string]string{"FERRY_NATS_URL": srv.URL}

	t.Run("no API", func(t *testing.T) {
		// request asks again until --timeout: keep that short.
		r := ferry(t, env, "job", "get", "job-42", "--timeout", "1s")
		if r.code != exitFail || !strings.Contains(r.stderr, "no ferry API answers") {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
	})

	f := startFakeAPI(t, srv, contracts.JobSucceeded)

	t.Run("job get json", func(t *testing.T) {
		r := ferry(t, env, "job", "get", "job-42", "-o", "json")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		var j contracts.Job
		if err := json.Unmarshal([]byte(r.stdout), &j); err != nil {
			t.Fatalf("not a job: %v\n%s", err, r.stdout)
		}
		if j.ID != "job-42" || len(j.Steps) != 3 || j.Steps[1].Name != "push" {
			t.Errorf("job = %+v", j)
		}
	})
	t.Run("job get table", func(t *testing.T) {
		r := ferry(t, env, "job", "get", "job-42")
		started := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC).Local().Format("15:04:05.000")
		for _, w := range []string{"job-42", "running", "connect-operator", "close (always)", "STEP",
			"ATTEMPTS", "STARTED", "ENDED", "WALL", "WORK", "RATE", "trace:", "0af7651916cd43dd8448eb211c80319c",
			started, "2.5s", "120ms", "64.0 MiB", "32.0 MiB/s", "so far", "bytes:"} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
			}
		}
	})
	t.Run("job get not found", func(t *testing.T) {
		r := ferry(t, env, "job", "get", "job-7")
		if r.code != exitFail || !strings.Contains(r.stderr, "no job job-7 (not_found)") {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
	t.Run("job list", func(t *testing.T) {
		r := ferry(t, env, "job", "list")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		for _, w := range []string{"ID", "job-42", "job-41", "db-backup", "step dump: auth_failed: password refused"} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
			}
		}
		r = ferry(t, env, "job", "list", "--state", "succeeded", "-o", "json")
		if r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
			t.Errorf("empty json list: exit %d %q", r.code, r.stdout)
		}
	})
	t.Run("job cancel", func(t *testing.T) {
		r := ferry(t, env, "job", "cancel", "job-9", "--reason", "customer asked")
		if r.code != 0 || !strings.Contains(r.stdout, "cancel requested: job job-9 is cancelling") {
			t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.cancelled) != 1 || f.cancelled[0].Reason != "customer asked" || f.cancelled[0].Schema != contracts.SchemaCancel {
			t.Errorf("cancel requests = %+v", f.cancelled)
		}
	})
	t.Run("submit", func(t *testing.T) {
		r := ferry(t, env, "update", "--id", "job-plain", "--from", "op-pc", "--to", "cust-1", "--dest", "/opt/app", "--files", "a.jar", "b.jar", "--ticket", "T-1")
		if r.code != 0 || strings.TrimSpace(r.stdout) != "job-plain" {
			t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		f.mu.Lock()
		req := f.submitted[len(f.submitted)-1]
		f.mu.Unlock()
		if req.Update == nil || len(req.Update.Files) != 2 || req.Ticket != "T-1" || req.Schema != contracts.SchemaJobRequest {
			t.Errorf("submitted %+v", req)
		}
	})
	t.Run("submit refused by the API", func(t *testing.T) {
		r := ferry(t, env, "update", "--ticket", "refuse", "--from", "op-pc", "--to", "cust-9", "--dest", "/opt/app", "a.jar")
		if r.code != exitUsage || !strings.Contains(r.stderr, `update.to (--to): host "cust-9" is not in the inventory`) {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
	t.Run("submit and wait: succeeded", func(t *testing.T) {
		r := ferry(t, env, "backup", "logs", "--id", "job-ok", "--from", "cust-1", "--paths", "/var/log/app/*.log", "--to", "op-pc", "--since", "48h", "--max-size", "1GiB", "--wait", "--wait-timeout", "20s")
		if r.code != 0 {
			t.Fatalf("exit %d, stderr %q\nstdout:\n%s", r.code, r.stderr, r.stdout)
		}
		want := []string{"job-ok", "job job-ok accepted (update)", "step connect-operator started (attempt 1)",
			"step connect-operator succeeded", "push 512 MiB / 1.0 GiB", "job job-ok succeeded"}
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if strings.Join(lines[:3], "|") != strings.Join(want[:3], "|") || lines[len(lines)-1] != want[5] {
			t.Errorf("lines:\n%s", r.stdout)
		}
		for _, w := range want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("stdout lacks %q", w)
			}
		}
		f.mu.Lock()
		req := f.submitted[len(f.submitted)-1]
		f.mu.Unlock()
		if lb := req.LogBackup; lb == nil || lb.MaxSize != 1<<30 || lb.Since != contracts.Duration(48*time.Hour) {
			t.Errorf("submitted %+v", req.LogBackup)
		}
	})
	t.Run("submit and wait: failed", func(t *testing.T) {
		f.outcome = contracts.JobFailed
		r := ferry(t, env, "update", "--id", "job-bad", "--from", "op-pc", "--to", "cust-1", "--dest", "/opt/app", "a.jar", "--wait", "--wait-timeout", "20s")
		if r.code != exitFail {
			t.Errorf("exit %d, want 1", r.code)
		}
		if !strings.Contains(r.stdout, "step push failed (attempt 1): verify_failed: sha256 mismatch") ||
			!strings.Contains(r.stderr, "job job-bad failed: step push: verify_failed: sha256 mismatch") {
			t.Errorf("stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
		}
		// watch replays the same job from its start, as JSON lines.
		r = ferry(t, env, "job", "watch", "job-bad", "-o", "json", "--wait-timeout", "20s")
		if r.code != exitFail {
			t.Errorf("watch exit %d", r.code)
		}
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		var last contracts.JobEvent
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Kind != contracts.EventFinished || last.State != contracts.JobFailed {
			t.Errorf("last line %q: %v", lines[len(lines)-1], err)
		}
	})
	t.Run("wait timeout", func(t *testing.T) {
		f.outcome = ""
		start := time.Now()
		r := ferry(t, env, "update", "--id", "job-slow", "--from", "op-pc", "--to", "cust-1", "--dest", "d", "a.jar", "--wait", "--wait-timeout", "500ms")
		if r.code != exitFail || !strings.Contains(r.stderr, "did not end within 500ms") || time.Since(start) > 10*time.Second {
			t.Errorf("exit %d, stderr %q after %s", r.code, r.stderr, time.Since(start))
		}
	})
}
