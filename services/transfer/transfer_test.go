package transfer_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/archive"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/ferrydesk/ferry/pkg/session"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
	"github.com/ferrydesk/ferry/pkg/worker/workertest"
	"github.com/ferrydesk/ferry/services/transfer"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// TestWiring runs the service against a real JetStream server and sends it one command
// of each operation for hosts and artifacts that do not exist: each fails permanently
// with a code that says why (never not_supported, never a pretended success), counted
// by the endpoint metrics.
func TestWiring(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	nc, js := srv.Connect(t, "transfer")
	reg := prometheus.NewRegistry()
	runService(t, transfer.Config{StagingDir: t.TempDir(), SecretsDir: t.TempDir(), DrainTimeout: 5 * time.Second},
		transfer.Deps{NC: nc, Registerer: reg, Logger: slog.New(slog.DiscardHandler)})

	const job = "job-wiring"
	ops := []struct {
		op   contracts.Op
		args any
		code string
	}{
		{contracts.OpCopyRemote, contracts.CopyRemoteArgs{Host: "op-pc", Sources: []string{"upd/*.jar"}, DestDir: "ferry"}, contracts.CodeNotFound},
		{contracts.OpPull, contracts.PullArgs{Host: "op-pc", Paths: []string{"ferry/*"}, Into: "../files"}, contracts.CodeInvalidCommand},
		{contracts.OpPush, contracts.PushArgs{Host: "customer-1", Artifact: "update.tar.zst", DestDir: "/opt/app"}, contracts.CodeNotFound},
		{contracts.OpDeliver, contracts.DeliverArgs{Host: "op-pc", Artifact: "db.dump", DestDir: "backups", Name: "../db.dump"}, contracts.CodeInvalidCommand},
	}
	for _, o := range ops {
		workertest.Send(t, js, contracts.ServiceTransfer, o.op, job, string(o.op), o.args)
	}
	evs := workertest.ByStep(workertest.StepEvents(t, js, job, len(ops), 20*time.Second))
	for _, o := range ops {
		ev, ok := evs[string(o.op)]
		switch {
		case !ok:
			t.Errorf("%s: no step event", o.op)
		case ev.Kind != contracts.StepFailed || ev.Error == nil || ev.Error.Code != o.code:
			t.Errorf("%s: event %+v (error %+v), want failed with %s", o.op, ev, ev.Error, o.code)
		case ev.Service != contracts.ServiceTransfer || ev.Error.Retryable:
			t.Errorf("%s: event %+v", o.op, ev)
		}
		if got := workertest.Counter(t, reg, "ferry_step_executions_total", map[string]string{"op": string(o.op), "outcome": "failed"}); got != 1 {
			t.Errorf("%s: ferry_step_executions_total{outcome=failed} = %v, want 1", o.op, got)
		}
	}
}

func runService(t *testing.T, cfg transfer.Config, deps transfer.Deps) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- transfer.Run(ctx, cfg, deps) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Run did not stop")
		}
	})
}

// world is a NATS server, a real sshd with an inventory entry and a lease for a job, a
// staging directory and a directory in the test user's home.
type world struct {
	t       *testing.T
	srv     *bustest.Server
	js      jetstream.JetStream
	sshd    *sshtest.Server
	secrets string
	staging string
	home    string // a directory below the test user's home, owned by it
	uid     int
	gid     int
}

func newWorld(t *testing.T, topo bus.Topology, jobs ...string) *world {
	t.Helper()
	return newWorldWith(t, topo, sshtest.Options{}, jobs...)
}

// newWorldWith is newWorld with the customer's sshd started with opts.
func newWorldWith(t *testing.T, topo bus.Topology, opts sshtest.Options, jobs ...string) *world {
	t.Helper()
	w := &world{t: t, srv: bustest.Start(t, topo), secrets: t.TempDir(), staging: t.TempDir()}
	_, w.js = w.srv.Connect(t, "test")
	ctx := context.Background()
	w.sshd = sshtest.Start(t, opts)
	sshtest.WriteCredential(t, w.secrets, "cred", map[string]string{sshdial.FilePassword: w.sshd.User().Password})
	u, err := user.Lookup(w.sshd.User().Name)
	if err != nil {
		t.Fatal(err)
	}
	w.uid, _ = strconv.Atoi(u.Uid)
	w.gid, _ = strconv.Atoi(u.Gid)
	if w.home, err = os.MkdirTemp(u.HomeDir, "transfer-test-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(w.home) })
	w.chown(w.home)

	hosts, err := inventory.Open(ctx, w.js)
	if err != nil {
		t.Fatal(err)
	}
	h := w.sshd.Host("customer", "cred")
	h.Roots = []string{w.home}
	if err := hosts.Put(ctx, h); err != nil {
		t.Fatal(err)
	}
	leases, err := session.OpenLeases(ctx, w.js)
	if err != nil {
		t.Fatal(err)
	}
	// Learn the fingerprint as the connector's connect step would, and record the lease.
	d := &session.Dialer{Leases: leases, Hosts: hosts, SecretsDir: w.secrets, Pool: sshdial.NewPool()}
	c, err := d.Dial(ctx, "customer", "")
	if err != nil {
		t.Fatal(err)
	}
	fp := c.Info().Fingerprint
	c.Close()
	now := time.Now()
	for _, job := range jobs {
		if err := leases.Put(ctx, contracts.Lease{JobID: job, Host: "customer", Fingerprint: fp, Created: now, Expires: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

func (w *world) chown(p string) {
	w.t.Helper()
	err := filepath.WalkDir(p, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, w.uid, w.gid)
	})
	if err != nil {
		w.t.Fatal(err)
	}
}

// stage writes a random artifact of size bytes and its manifest into the job's staging.
func (w *world) stage(job, name string, size int64) contracts.Manifest {
	w.t.Helper()
	dir := filepath.Join(w.staging, job)
	os.MkdirAll(dir, 0o750)
	p := filepath.Join(dir, name)
	writeRandom(w.t, p, size)
	m := contracts.Manifest{Schema: contracts.SchemaManifest, JobID: job, Created: time.Now().UTC(),
		Artifact: contracts.ManifestArtifact{Name: name, Size: size, SHA256: sha(w.t, p), Kind: "archive", Compression: "zstd"}}
	raw, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, contracts.ManifestName(name)), raw, 0o640); err != nil {
		w.t.Fatal(err)
	}
	return m
}

func writeRandom(t *testing.T, p string, size int64) {
	t.Helper()
	os.MkdirAll(filepath.Dir(p), 0o755)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
}

func sha(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

func (w *world) config() transfer.Config {
	return transfer.Config{StagingDir: w.staging, SecretsDir: w.secrets, DrainTimeout: 5 * time.Second,
		InProgressEvery: 500 * time.Millisecond, Keepalive: sshdial.Keepalive{Interval: time.Second, CountMax: 2}}
}

func (w *world) rel(p string) string {
	r, err := filepath.Rel(filepath.Dir(w.home), p)
	if err != nil {
		w.t.Fatal(err)
	}
	return r
}

func output[T any](t *testing.T, ev contracts.StepEvent) T {
	t.Helper()
	var v T
	if ev.Kind != contracts.StepSucceeded {
		t.Fatalf("step %s: %+v (error %+v)", ev.Step, ev, ev.Error)
	}
	if err := json.Unmarshal(ev.Output, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// The update action's transfer steps end to end through the runner: copy the update on
// the operator's side, pull it to staging, push an artifact, deliver one (twice: the
// redelivery lands the same files, no duplicate).
func TestStepsEndToEnd(t *testing.T) {
	const job = "job-e2e"
	w := newWorld(t, bus.Topology{}, job)
	nc, _ := w.srv.Connect(t, "transfer")
	reg := prometheus.NewRegistry()
	runService(t, w.config(), transfer.Deps{NC: nc, Registerer: reg, Logger: slog.New(slog.DiscardHandler)})

	src := filepath.Join(w.home, "updates", "app")
	writeRandom(t, filepath.Join(src, "bin", "app"), 1<<20)
	writeRandom(t, filepath.Join(src, "lib", "x.jar"), 5000)
	w.chown(w.home)
	w.stage(job, "update.tar.zst", 3<<20)

	workertest.Send(t, w.js, contracts.ServiceTransfer, contracts.OpCopyRemote, job, "copy",
		contracts.CopyRemoteArgs{Host: "customer", Sources: []string{w.rel(src)}, DestDir: w.rel(filepath.Join(w.home, "ferry", "updates", job))})
	evs := workertest.ByStep(workertest.StepEvents(t, w.js, job, 1, 30*time.Second))
	cp := output[contracts.DeliveryResult](t, evs["copy"])
	if cp.Bytes != 1<<20+5000 || len(cp.Paths) != 1 {
		t.Fatalf("copy: %+v", cp)
	}

	workertest.Send(t, w.js, contracts.ServiceTransfer, contracts.OpPull, job, "pull",
		contracts.PullArgs{Host: "customer", Paths: []string{w.rel(filepath.Join(w.home, "ferry", "updates", job))}, Into: "files"})
	workertest.Send(t, w.js, contracts.ServiceTransfer, contracts.OpPush, job, "push",
		contracts.PushArgs{Host: "customer", Artifact: "update.tar.zst", DestDir: filepath.Join(w.home, "opt")})
	workertest.Send(t, w.js, contracts.ServiceTransfer, contracts.OpDeliver, job, "deliver",
		contracts.DeliverArgs{Host: "customer", Artifact: "update.tar.zst", DestDir: w.rel(filepath.Join(w.home, "backups", "acme")), Name: "acme-db.tar.zst"})
	evs = workertest.ByStep(workertest.StepEvents(t, w.js, job, 4, 30*time.Second))
	pull := output[contracts.DeliveryResult](t, evs["pull"])
	if pull.Bytes != 1<<20+5000 {
		t.Fatalf("pull: %+v", pull)
	}
	if sha(t, filepath.Join(w.staging, job, "files", "app", "bin", "app")) != sha(t, filepath.Join(src, "bin", "app")) {
		t.Fatal("pulled file differs")
	}
	push := output[contracts.DeliveryResult](t, evs["push"])
	if len(push.Paths) != 2 || sha(t, push.Paths[0]) != sha(t, filepath.Join(w.staging, job, "update.tar.zst")) {
		t.Fatalf("push: %+v", push)
	}
	del := output[contracts.DeliveryResult](t, evs["deliver"])
	backups := filepath.Join(w.home, "backups", "acme")
	if len(del.Paths) != 2 || del.Paths[0] != filepath.Join(backups, "acme-db.tar.zst") || del.Paths[1] != filepath.Join(backups, "acme-db.tar.zst.manifest.json") {
		t.Fatalf("deliver: %+v", del)
	}

	// Redelivered (a new attempt of the same step): same result, nothing duplicated.
	before := workertest.Counter(t, reg, "ferry_transfer_bytes_total", map[string]string{"direction": "deliver", "host": "customer"})
	cmd := contracts.StepCommand{Schema: contracts.SchemaStepCommand, JobID: job, Action: contracts.ActionDBBackup, Step: "deliver", Attempt: 2,
		Service: contracts.ServiceTransfer, Op: contracts.OpDeliver, Deadline: time.Now().Add(time.Minute)}
	cmd.Args, _ = json.Marshal(contracts.DeliverArgs{Host: "customer", Artifact: "update.tar.zst", DestDir: w.rel(backups), Name: "acme-db.tar.zst"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.Publish(ctx, w.js, contracts.CommandSubject(contracts.ServiceTransfer, contracts.OpDeliver), cmd, contracts.CommandMsgID(job, "deliver", 2), job); err != nil {
		t.Fatal(err)
	}
	evs2 := workertest.StepEvents(t, w.js, job, 5, 30*time.Second)
	again := output[contracts.DeliveryResult](t, evs2[len(evs2)-1])
	if len(again.Paths) != 2 || again.Paths[0] != del.Paths[0] {
		t.Fatalf("redelivered deliver: %+v", again)
	}
	entries, _ := os.ReadDir(backups)
	if len(entries) != 2 {
		t.Fatalf("backups dir holds %d entries after a redelivery, want 2", len(entries))
	}
	if after := workertest.Counter(t, reg, "ferry_transfer_bytes_total", map[string]string{"direction": "deliver", "host": "customer"}); after != before {
		t.Errorf("the redelivery sent %v bytes again", after-before)
	}
	if got := workertest.Counter(t, reg, "ferry_transfer_bytes_total", map[string]string{"direction": "push", "host": "customer"}); got < 3<<20 {
		t.Errorf("ferry_transfer_bytes_total{push} = %v", got)
	}
}

// The bundle step through the runner, on a host that runs commands (streamed from its
// tar) and on an SFTP-only one (pulled into scratch staging, archived, scratch
// removed): the same files either way, checked against the manifest; a redelivery
// returns the bundle in place untouched; bad arguments fail for good.
func TestBundleStep(t *testing.T) {
	for _, sftpOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("sftp-only=%v", sftpOnly), func(t *testing.T) {
			const job = "job-bundle"
			w := newWorldWith(t, bus.Topology{}, sshtest.Options{SFTPOnly: sftpOnly}, job)
			nc, _ := w.srv.Connect(t, "transfer")
			reg := prometheus.NewRegistry()
			runService(t, w.config(), transfer.Deps{NC: nc, Registerer: reg, Logger: slog.New(slog.DiscardHandler)})
			logs := filepath.Join(w.home, "logs")
			writeRandom(t, filepath.Join(logs, "app.log"), 3<<20)
			writeRandom(t, filepath.Join(logs, "app.log.1.gz"), 70<<10)
			writeRandom(t, filepath.Join(logs, "notes.txt"), 10)
			for i := range 40 {
				writeRandom(t, filepath.Join(logs, "small", fmt.Sprintf("s%02d.log", i)), int64(100*i+1))
			}
			w.chown(w.home)
			args := contracts.BundleArgs{Host: "customer", Paths: []string{w.rel(logs) + "/app.log*", w.rel(logs) + "/small"},
				Name: "logs-" + job + ".tar.zst", Compression: "zstd"}
			workertest.Send(t, w.js, contracts.ServiceTransfer, contracts.OpBundle, job, "bundle", args)
			evs := workertest.ByStep(workertest.StepEvents(t, w.js, job, 1, 30*time.Second))
			res := output[contracts.ArtifactResult](t, evs["bundle"])
			if res.Name != args.Name || res.Files != 42 {
				t.Fatalf("bundle: %+v", res)
			}
			dir := filepath.Join(w.staging, job)
			raw, err := os.ReadFile(filepath.Join(dir, contracts.ManifestName(args.Name)))
			if err != nil {
				t.Fatal(err)
			}
			var m contracts.Manifest
			if err := json.Unmarshal(raw, &m); err != nil {
				t.Fatal(err)
			}
			if m.Artifact.SHA256 != res.SHA256 || m.Artifact.SHA256 != sha(t, filepath.Join(dir, args.Name)) {
				t.Fatalf("manifest %+v, result %+v", m.Artifact, res)
			}
			f, err := os.Open(filepath.Join(dir, args.Name))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			out := t.TempDir()
			root, _ := os.OpenRoot(out)
			defer root.Close()
			if err := archive.Extract(context.Background(), f, root, m); err != nil {
				t.Fatal(err)
			}
			// A directory named directly lands as its contents.
			for p, from := range map[string]string{"app.log": "app.log", "app.log.1.gz": "app.log.1.gz", "s07.log": "small/s07.log", "s39.log": "small/s39.log"} {
				if sha(t, filepath.Join(out, p)) != sha(t, filepath.Join(logs, from)) {
					t.Errorf("%s differs", p)
				}
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 2 {
				t.Errorf("staging holds %v, want the bundle and its manifest only", entries)
			}
			if got := workertest.Counter(t, reg, "ferry_transfer_bytes_total", map[string]string{"direction": "pull", "host": "customer"}); got < 3<<20 {
				t.Errorf("ferry_transfer_bytes_total{pull} = %v", got)
			}

			// Redelivered: the bundle in place is returned, nothing read again.
			before := workertest.Counter(t, reg, "ferry_transfer_bytes_total", map[string]string{"direction": "pull", "host": "customer"})
			cmd := contracts.StepCommand{Schema: contracts.SchemaStepCommand, JobID: job, Action: contracts.ActionLogBackup, Step: "bundle", Attempt: 2,
				Service: contracts.ServiceTransfer, Op: contracts.OpBundle, Deadline: time.Now().Add(time.Minute)}
			cmd.Args, _ = json.Marshal(args)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := bus.Publish(ctx, w.js, contracts.CommandSubject(contracts.ServiceTransfer, contracts.OpBundle), cmd, contracts.CommandMsgID(job, "bundle", 2), job); err != nil {
				t.Fatal(err)
			}
			evs2 := workertest.StepEvents(t, w.js, job, 2, 30*time.Second)
			if again := output[contracts.ArtifactResult](t, evs2[len(evs2)-1]); again != res {
				t.Fatalf("redelivered bundle: %+v, want %+v", again, res)
			}
			if after := workertest.Counter(t, reg, "ferry_transfer_bytes_total", map[string]string{"direction": "pull", "host": "customer"}); after != before {
				t.Errorf("the redelivery read %v bytes again", after-before)
			}

			// Bad arguments fail for good, naming what is wrong.
			bad := map[string]contracts.BundleArgs{
				"bad-name": {Host: "customer", Paths: args.Paths, Name: "../x.tar.zst"},
				"no-paths": {Host: "customer", Name: "x.tar.zst"},
				"bad-comp": {Host: "customer", Paths: args.Paths, Name: "x.tar.zst", Compression: "rar"},
			}
			for step, a := range bad {
				workertest.Send(t, w.js, contracts.ServiceTransfer, contracts.OpBundle, job, step, a)
			}
			evs3 := workertest.ByStep(workertest.StepEvents(t, w.js, job, 5, 30*time.Second))
			for step := range bad {
				ev := evs3[step]
				if ev.Kind != contracts.StepFailed || ev.Error == nil || ev.Error.Code != contracts.CodeInvalidCommand || ev.Error.Retryable {
					t.Errorf("%s: %+v", step, ev)
				}
			}
		})
	}
}

// An update's bundle (the source's pull and archive in one pass) of a tree with a
// link inside it and an empty directory: streamed on the first attempt, staged too
// when the customer gets the tree (Stage), and on a retry pulled into scratch staging,
// resuming a file cut short by the attempt before. The three give the same archive,
// byte for byte; what each leaves in staging is what it promises.
func TestUpdateBundle(t *testing.T) {
	jobs := []string{"ub-stream", "ub-stage", "ub-retry"}
	w := newWorld(t, bus.Topology{}, jobs...)
	nc, _ := w.srv.Connect(t, "transfer")
	reg := prometheus.NewRegistry()
	runService(t, w.config(), transfer.Deps{NC: nc, Registerer: reg, Logger: slog.New(slog.DiscardHandler)})

	tree := filepath.Join(w.home, "ferry", "updates", "app")
	const big = 4 << 20
	writeRandom(t, filepath.Join(tree, "bin", "app"), big)
	writeRandom(t, filepath.Join(tree, "lib", "libapp.so.1"), 10<<10)
	if err := os.Symlink("libapp.so.1", filepath.Join(tree, "lib", "libapp.so")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(tree, "var", "cache"), 0o750); err != nil {
		t.Fatal(err)
	}
	w.chown(w.home)
	const total = big + 10<<10
	pulled := func() float64 {
		return workertest.Counter(t, reg, "ferry_transfer_bytes_total", map[string]string{"direction": "pull", "host": "customer"})
	}
	bundle := func(job string, attempt int, stage string) (contracts.ArtifactResult, contracts.Manifest, float64) {
		t.Helper()
		before := pulled()
		args := contracts.BundleArgs{Host: "customer", Paths: []string{w.rel(tree)}, Links: true, Stage: stage,
			Name: "update-" + job + ".tar.zst", Compression: "zstd"}
		workertest.SendAttempt(t, w.js, contracts.ServiceTransfer, contracts.OpBundle, job, "bundle", attempt, args)
		res := output[contracts.ArtifactResult](t, workertest.StepEvents(t, w.js, job, 1, 30*time.Second)[0])
		raw, err := os.ReadFile(filepath.Join(w.staging, job, contracts.ManifestName(args.Name)))
		if err != nil {
			t.Fatal(err)
		}
		var m contracts.Manifest
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		if m.Artifact.SHA256 != res.SHA256 || sha(t, filepath.Join(w.staging, job, args.Name)) != res.SHA256 {
			t.Fatalf("%s: manifest %+v, result %+v", job, m.Artifact, res)
		}
		return res, m, pulled() - before
	}
	staged := func(job string) []string {
		var names []string
		filepath.WalkDir(filepath.Join(w.staging, job), func(p string, d fs.DirEntry, err error) error {
			if rel, _ := filepath.Rel(filepath.Join(w.staging, job), p); err == nil && rel != "." {
				names = append(names, filepath.ToSlash(rel))
			}
			return nil
		})
		return names
	}

	// Streamed: nothing staged but the archive and its manifest.
	stream, m, sent := bundle("ub-stream", 1, "")
	if sent != total || stream.Files != 2 {
		t.Errorf("streamed bundle read %v bytes, %d files; want %d, 2", sent, stream.Files, total)
	}
	if !slices.Contains(m.Links, contracts.ManifestLink{Path: "lib/libapp.so", Target: "libapp.so.1"}) ||
		!slices.ContainsFunc(m.Dirs, func(d contracts.ManifestDir) bool { return d.Path == "var/cache" }) {
		t.Errorf("manifest lacks the link or the empty directory: links %+v, dirs %+v", m.Links, m.Dirs)
	}
	if got := staged("ub-stream"); !reflect.DeepEqual(got, []string{"update-ub-stream.tar.zst", "update-ub-stream.tar.zst.manifest.json"}) {
		t.Errorf("streamed bundle left %v in staging", got)
	}

	// Staged for --unpack: the same archive, and the tree kept, link and empty
	// directory included.
	kept, _, _ := bundle("ub-stage", 1, "files")
	if kept.SHA256 != stream.SHA256 {
		t.Errorf("the staged bundle's archive differs from the streamed one's")
	}
	files := filepath.Join(w.staging, "ub-stage", "files")
	if sha(t, filepath.Join(files, "bin", "app")) != sha(t, filepath.Join(tree, "bin", "app")) {
		t.Error("staged bin/app differs")
	}
	if target, err := os.Readlink(filepath.Join(files, "lib", "libapp.so")); err != nil || target != "libapp.so.1" {
		t.Errorf("staged link: %q, %v", target, err)
	}
	if fi, err := os.Stat(filepath.Join(files, "var", "cache")); err != nil || !fi.IsDir() {
		t.Errorf("staged empty directory: %v", err)
	}

	// A retry: the attempt before was cut with half of bin/app in scratch staging.
	const name = "update-ub-retry.tar.zst"
	part := filepath.Join(w.staging, "ub-retry", ".bundle-"+name, "bin", ".app.ferry-part")
	if err := os.MkdirAll(filepath.Dir(part), 0o750); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(filepath.Join(tree, "bin", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(part)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(dst, src, big/2); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	retry, _, sent := bundle("ub-retry", 2, "")
	if retry.SHA256 != stream.SHA256 {
		t.Errorf("the retried bundle's archive differs from the streamed one's")
	}
	if sent != total-big/2 {
		t.Errorf("the retry read %v bytes, want %d: the verified half of bin/app not read again", sent, total-big/2)
	}
	if got := staged("ub-retry"); !reflect.DeepEqual(got, []string{name, contracts.ManifestName(name)}) {
		t.Errorf("the retry left %v in staging, want the archive and its manifest", got)
	}
}
