package archiver_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/archive"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/worker/workertest"
	"github.com/ferrydesk/ferry/services/archiver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// service runs the archiver against a real JetStream server and returns a connection,
// JetStream, the metrics registry and the staging root.
func service(t *testing.T) (*nats.Conn, jetstream.JetStream, *prometheus.Registry, string) {
	t.Helper()
	srv := bustest.Start(t, bus.Topology{})
	nc, js := srv.Connect(t, "archiver")
	reg := prometheus.NewRegistry()
	stagingDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- archiver.Run(ctx, archiver.Config{StagingDir: stagingDir, DrainTimeout: 5 * time.Second},
			archiver.Deps{NC: nc, Registerer: reg, Logger: slog.New(slog.DiscardHandler)})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not stop")
		}
	})
	return nc, js, reg, stagingDir
}

// run sends one command and waits for its step event.
func run(t *testing.T, js jetstream.JetStream, job, step string, op contracts.Op, args any, seen int) contracts.StepEvent {
	t.Helper()
	workertest.Send(t, js, contracts.ServiceArchiver, op, job, step, args)
	evs := workertest.StepEvents(t, js, job, seen+1, 30*time.Second)
	if len(evs) != seen+1 || evs[seen].Step != step {
		t.Fatalf("%s: events %+v", step, evs)
	}
	return evs[seen]
}

// tree writes a staged tree: nested directories, an empty file, a 20 MiB file, a
// 150-character name, unicode names. It returns each file's SHA-256 by path.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	long := strings.Repeat("x", 146) + ".log"
	files := map[string]int{
		"app/bin/run.sh": 100, "app/empty": 0, "app/data/big.bin": 20 << 20,
		"app/data/" + long: 3000, "app/docs/übersicht/日本語.txt": 500, "app/a/b/c/d/e.txt": 10,
	}
	sums := map[string]string{}
	for p, size := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o750); err != nil {
			t.Fatal(err)
		}
		// Cheap to compress (the race detector slows compression down a lot), yet
		// every 4 KiB differs.
		content := make([]byte, size)
		for i := 0; i < size; i += 4096 {
			copy(content[i:], fmt.Sprintf("%s block %d\n", p, i/4096))
		}
		if err := os.WriteFile(full, content, 0o640); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(content)
		sums[p] = hex.EncodeToString(sum[:])
	}
	return sums
}

// TestArchive runs the archive step over JetStream: the archive and its manifest land in
// the job's staging, progress goes out, the archive extracts to the staged tree; a
// redelivered command gives the same result without writing again; bad arguments,
// a missing staging area and an empty one give what they should; a dump command with
// an unknown engine fails for good (dumps are tested in dump_test.go).
func TestArchive(t *testing.T) {
	nc, js, reg, stagingDir := service(t)
	const job = "job-archive"
	jobDir := filepath.Join(stagingDir, job)
	sums := tree(t, filepath.Join(jobDir, "files"))
	if err := os.MkdirAll(filepath.Join(jobDir, "empty"), 0o750); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var progress []contracts.Progress
	sub, err := nc.Subscribe(contracts.ProgressSubject(job), func(m *nats.Msg) {
		var p contracts.Progress
		if json.Unmarshal(m.Data, &p) == nil {
			mu.Lock()
			progress = append(progress, p)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	args := contracts.ArchiveArgs{From: "files", Name: "update-" + job + ".tar.zst", Compression: "zstd"}
	ev := run(t, js, job, "archive", contracts.OpArchive, args, 0)
	if ev.Kind != contracts.StepSucceeded {
		t.Fatalf("archive: %+v (error %+v)", ev, ev.Error)
	}
	var res contracts.ArtifactResult
	if err := json.Unmarshal(ev.Output, &res); err != nil {
		t.Fatal(err)
	}
	archivePath := filepath.Join(jobDir, args.Name)
	fi, err := os.Stat(archivePath)
	if err != nil {
		t.Fatal(err)
	}
	if res.Name != args.Name || res.Manifest != contracts.ManifestName(args.Name) || res.Size != fi.Size() || res.Files != len(sums) || ev.Bytes != res.Size {
		t.Errorf("result %+v (event bytes %d), archive of %d bytes", res, ev.Bytes, fi.Size())
	}
	var m contracts.Manifest
	b, err := os.ReadFile(filepath.Join(jobDir, res.Manifest))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.Artifact.SHA256 != res.SHA256 || m.Artifact.Size != res.Size || m.JobID != job || m.Artifact.Kind != "archive" || len(m.Files) != len(sums) {
		t.Errorf("manifest %+v", m)
	}
	for _, f := range m.Files {
		if sums[f.Path] != f.SHA256 {
			t.Errorf("manifest: %s has %s, staged %s", f.Path, f.SHA256, sums[f.Path])
		}
	}
	mu.Lock()
	last := contracts.Progress{}
	if len(progress) > 0 {
		last = progress[len(progress)-1]
	}
	mu.Unlock()
	if last.File != args.Name || last.Done != last.Total || last.Total < 20<<20 || last.Step != "archive" {
		t.Errorf("last progress %+v", last)
	}

	// The archive extracts to the staged tree.
	dst := t.TempDir()
	extract(t, archivePath, dst, m)
	got := map[string]string{}
	err = filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(dst, p)
			got[filepath.ToSlash(rel)] = fileSum(t, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(sums) {
		t.Errorf("extracted %v, staged %v", got, sums)
	}

	// Redelivered (same arguments, another message): same result, nothing written.
	ev2 := run(t, js, job, "archive-again", contracts.OpArchive, args, 1)
	var res2 contracts.ArtifactResult
	_ = json.Unmarshal(ev2.Output, &res2)
	fi2, err := os.Stat(archivePath)
	if err != nil {
		t.Fatal(err)
	}
	if ev2.Kind != contracts.StepSucceeded || res2 != res || !os.SameFile(fi, fi2) || !fi2.ModTime().Equal(fi.ModTime()) {
		t.Errorf("redelivered: %+v %+v; archive rewritten: %v", ev2, res2, !os.SameFile(fi, fi2) || !fi2.ModTime().Equal(fi.ModTime()))
	}

	// Failures and the empty staging area.
	cases := []struct {
		step string
		op   contracts.Op
		args any
		kind contracts.StepEventKind
		code string
	}{
		{"bad-name", contracts.OpArchive, contracts.ArchiveArgs{From: "files", Name: "../x.tar.zst"}, contracts.StepFailed, contracts.CodeInvalidCommand},
		{"escape", contracts.OpArchive, contracts.ArchiveArgs{From: "../other-job", Name: "x.tar.zst"}, contracts.StepFailed, contracts.CodeInvalidCommand},
		{"unknown-arg", contracts.OpArchive, map[string]string{"from": "files", "name": "x.tar.zst", "level": "9"}, contracts.StepFailed, contracts.CodeInvalidCommand},
		{"missing", contracts.OpArchive, contracts.ArchiveArgs{From: "nothing", Name: "x.tar.zst"}, contracts.StepFailed, contracts.CodeNotFound},
		{"empty", contracts.OpArchive, contracts.ArchiveArgs{From: "empty", Name: "logs.tar.gz", Compression: "gzip"}, contracts.StepSucceeded, ""},
		{"dump-bad-engine", contracts.OpDump, contracts.DumpArgs{Engine: "oracle", Database: "app", Addr: "127.0.0.1:15432", Name: "app.dump"}, contracts.StepFailed, contracts.CodeInvalidCommand},
	}
	for i, c := range cases {
		ev := run(t, js, job, c.step, c.op, c.args, 2+i)
		switch {
		case ev.Kind != c.kind:
			t.Errorf("%s: %+v (error %+v), want %s", c.step, ev, ev.Error, c.kind)
		case c.kind == contracts.StepFailed && (ev.Error == nil || ev.Error.Code != c.code || ev.Error.Retryable):
			t.Errorf("%s: error %+v, want permanent %s", c.step, ev.Error, c.code)
		}
	}
	var empty contracts.Manifest
	b, _ = os.ReadFile(filepath.Join(jobDir, "logs.tar.gz.manifest.json"))
	if err := json.Unmarshal(b, &empty); err != nil || !empty.Empty || len(empty.Files) != 0 || empty.Artifact.Compression != "gzip" {
		t.Errorf("empty manifest %+v %v", empty, err)
	}

	for outcome, want := range map[string]float64{"succeeded": 3, "failed": 3} {
		if got := workertest.Counter(t, reg, "ferry_step_executions_total", map[string]string{"op": "archive", "outcome": outcome}); got != want {
			t.Errorf("archive %s = %v, want %v", outcome, got, want)
		}
	}
}

func extract(t *testing.T, archivePath, dst string, m contracts.Manifest) {
	t.Helper()
	f, err := os.Open(archivePath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	root, err := os.OpenRoot(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if err := archive.Extract(context.Background(), f, root, m); err != nil {
		t.Fatal(err)
	}
}

func fileSum(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
