package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/archive"
	"github.com/ferrydesk/ferry/pkg/staging"
)

const job = "job-1"

// newService returns the service on a fresh staging root and that root's path.
func newService(t *testing.T) (*archiver, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "staging")
	st, err := staging.NewDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return New(st, Options{}).(*archiver), dir
}

// stage writes files (path → content) below <staging>/<job>/<from>.
func stage(t *testing.T, stagingDir, from string, files map[string]string) {
	t.Helper()
	base := filepath.Join(stagingDir, job, from)
	if err := os.MkdirAll(base, 0o750); err != nil {
		t.Fatal(err)
	}
	for p, content := range files {
		full := filepath.Join(base, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
	}
}

func stepError(t *testing.T, err error) *contracts.StepError {
	t.Helper()
	var se *contracts.StepError
	if !errors.As(err, &se) {
		t.Fatalf("error %v is not a step error", err)
	}
	return se
}

func readManifest(t *testing.T, p string) contracts.Manifest {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m contracts.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestArchive writes an archive and its manifest next to the staged tree, leaves no
// temporary file, and the archive extracts to the staged files.
func TestArchive(t *testing.T) {
	a, dir := newService(t)
	files := map[string]string{"app/bin/run.sh": "#!/bin/sh\n", "app/README": "hello", "app/empty": ""}
	stage(t, dir, "files", files)
	for _, comp := range []string{"", "gzip"} {
		name := "update.tar." + map[string]string{"": "zst", "gzip": "gz"}[comp]
		res, err := a.archive(context.Background(), job, contracts.ArchiveArgs{From: "files", Name: name, Compression: comp})
		if err != nil {
			t.Fatal(err)
		}
		jobDir := filepath.Join(dir, job)
		data, err := os.ReadFile(filepath.Join(jobDir, name))
		if err != nil {
			t.Fatal(err)
		}
		m := readManifest(t, filepath.Join(jobDir, contracts.ManifestName(name)))
		wantComp := comp
		if comp == "" {
			wantComp = archive.Zstd
		}
		want := contracts.ArtifactResult{Name: name, Manifest: name + ".manifest.json", Size: int64(len(data)), SHA256: m.Artifact.SHA256, Files: 3}
		if res != want || m.Artifact.Compression != wantComp || m.JobID != job || m.Artifact.Name != name {
			t.Errorf("result %+v, manifest %+v; want %+v", res, m.Artifact, want)
		}
		dst := t.TempDir()
		root, err := os.OpenRoot(dst)
		if err != nil {
			t.Fatal(err)
		}
		if err := archive.Extract(context.Background(), bytes.NewReader(data), root, m); err != nil {
			t.Fatal(err)
		}
		_ = root.Close()
		for p, content := range files {
			if b, err := os.ReadFile(filepath.Join(dst, p)); err != nil || string(b) != content {
				t.Errorf("%s: %q %v", p, b, err)
			}
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, job))
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

// TestArchiveRedelivered: a second run finds the archive and its manifest in place and
// returns the same result without writing either again; a damaged archive is written
// again, to the same bytes.
func TestArchiveRedelivered(t *testing.T) {
	a, dir := newService(t)
	stage(t, dir, "logs", map[string]string{"a.log": strings.Repeat("line\n", 1000), "sub/b.log": "b"})
	args := contracts.ArchiveArgs{From: "logs", Name: "logs.tar.zst", Compression: "zstd"}
	first, err := a.archive(context.Background(), job, args)
	if err != nil {
		t.Fatal(err)
	}
	archivePath := filepath.Join(dir, job, args.Name)
	manifestPath := filepath.Join(dir, job, contracts.ManifestName(args.Name))
	before := []os.FileInfo{stat(t, archivePath), stat(t, manifestPath)}
	time.Sleep(10 * time.Millisecond) // a rewrite would show in the mtime

	again, err := a.archive(context.Background(), job, args)
	if err != nil || again != first {
		t.Fatalf("second run: %+v %v, want %+v", again, err, first)
	}
	for i, p := range []string{archivePath, manifestPath} {
		after := stat(t, p)
		if !os.SameFile(before[i], after) || !after.ModTime().Equal(before[i].ModTime()) {
			t.Errorf("%s was written again", p)
		}
	}

	// Other compression under the same name: not the same archive, so written again.
	if _, err := a.archive(context.Background(), job, contracts.ArchiveArgs{From: "logs", Name: args.Name, Compression: "gzip"}); err != nil {
		t.Fatal(err)
	}
	if m := readManifest(t, manifestPath); m.Artifact.Compression != archive.Gzip {
		t.Errorf("manifest says %q after a gzip run", m.Artifact.Compression)
	}

	// A damaged archive is not taken for the real one.
	if _, err := a.archive(context.Background(), job, args); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(archivePath)
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(archivePath, data, 0o640); err != nil {
		t.Fatal(err)
	}
	damaged := stat(t, archivePath)
	fixed, err := a.archive(context.Background(), job, args)
	if err != nil || fixed != first {
		t.Fatalf("after damage: %+v %v, want %+v", fixed, err, first)
	}
	if os.SameFile(damaged, stat(t, archivePath)) {
		t.Error("damaged archive kept")
	}
}

func stat(t *testing.T, p string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// TestArchiveBadArgs: arguments that can never succeed fail for good with
// invalid_command; a staging area that is not there fails with not_found.
func TestArchiveBadArgs(t *testing.T) {
	a, dir := newService(t)
	stage(t, dir, "files", map[string]string{"a": "a"})
	jobDir := filepath.Join(dir, job)
	if err := os.WriteFile(filepath.Join(jobDir, "plain"), []byte("x"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(t.TempDir(), filepath.Join(jobDir, "linked")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(dir, job, "files", "etc")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args contracts.ArchiveArgs
		code string
		say  string
	}{
		{contracts.ArchiveArgs{From: "files", Name: ""}, contracts.CodeInvalidCommand, "no artifact name"},
		{contracts.ArchiveArgs{From: "files", Name: "a/b.tar.zst"}, contracts.CodeInvalidCommand, "not a path"},
		{contracts.ArchiveArgs{From: "files", Name: "../b.tar.zst"}, contracts.CodeInvalidCommand, "not a path"},
		{contracts.ArchiveArgs{From: "files", Name: ".."}, contracts.CodeInvalidCommand, `".." component`},
		{contracts.ArchiveArgs{From: "files", Name: "."}, contracts.CodeInvalidCommand, `"." component`},
		{contracts.ArchiveArgs{From: "files", Name: `a\b`}, contracts.CodeInvalidCommand, "backslash"},
		{contracts.ArchiveArgs{From: "files", Name: strings.Repeat("n", 201)}, contracts.CodeInvalidCommand, "at most 200"},
		{contracts.ArchiveArgs{From: "files", Name: "x.manifest.json"}, contracts.CodeInvalidCommand, "reserved"},
		{contracts.ArchiveArgs{From: "files", Name: "files"}, contracts.CodeInvalidCommand, "into the staging area"},
		{contracts.ArchiveArgs{From: "files/sub", Name: "files"}, contracts.CodeInvalidCommand, "into the staging area"},
		{contracts.ArchiveArgs{From: "", Name: "x.tar.zst"}, contracts.CodeInvalidCommand, "no staging area"},
		{contracts.ArchiveArgs{From: ".", Name: "x.tar.zst"}, contracts.CodeInvalidCommand, `"." component`},
		{contracts.ArchiveArgs{From: "../job-2/files", Name: "x.tar.zst"}, contracts.CodeInvalidCommand, `".." component`},
		{contracts.ArchiveArgs{From: "/etc", Name: "x.tar.zst"}, contracts.CodeInvalidCommand, "absolute"},
		{contracts.ArchiveArgs{From: "files", Name: "x.tar.xz", Compression: "xz"}, contracts.CodeInvalidCommand, "want zstd or gzip"},
		{contracts.ArchiveArgs{From: "linked", Name: "x.tar.zst"}, contracts.CodeInvalidCommand, "symbolic link"},
		{contracts.ArchiveArgs{From: "files", Name: "x.tar.zst"}, contracts.CodeInvalidCommand, `staging area files of job job-1: archive: unsupported: etc is a symbolic link to "/etc", an absolute path: it leads outside the tree`},
		{contracts.ArchiveArgs{From: "nothing", Name: "x.tar.zst"}, contracts.CodeNotFound, "nothing staged in job-1/nothing"},
		{contracts.ArchiveArgs{From: "files/deeper/still", Name: "x.tar.zst"}, contracts.CodeNotFound, "nothing staged in job-1/files/deeper/still"},
		{contracts.ArchiveArgs{From: "plain", Name: "x.tar.zst"}, contracts.CodeNotFound, "not a directory"},
	}
	for _, c := range cases {
		_, err := a.archive(context.Background(), job, c.args)
		if err == nil {
			t.Errorf("%+v: no error", c.args)
			continue
		}
		se := stepError(t, err)
		if se.Code != c.code || se.Retryable || !strings.Contains(se.Message, c.say) {
			t.Errorf("%+v: %+v, want permanent %s saying %q", c.args, se, c.code, c.say)
		}
	}
	entries, _ := os.ReadDir(jobDir)
	for _, e := range entries {
		if n := e.Name(); n != "files" && n != "plain" && n != "linked" {
			t.Errorf("%s left in the job's staging", n)
		}
	}
	// Outside a runner there is no job id in ctx: the command can never succeed.
	_, err := a.Archive(context.Background(), contracts.ArchiveArgs{From: "files", Name: "x.tar.zst"})
	if se := stepError(t, err); se.Code != contracts.CodeInvalidCommand || se.Retryable {
		t.Errorf("Archive without a job = %+v", se)
	}
}

// TestArchiveEmpty: an empty staging area gives an archive with no files, marked empty.
func TestArchiveEmpty(t *testing.T) {
	a, dir := newService(t)
	stage(t, dir, "logs", nil)
	res, err := a.archive(context.Background(), job, contracts.ArchiveArgs{From: "logs", Name: "logs.tar.zst"})
	if err != nil {
		t.Fatal(err)
	}
	m := readManifest(t, filepath.Join(dir, job, res.Manifest))
	if res.Files != 0 || !m.Empty || len(m.Files) != 0 || res.Size == 0 || res.Size != m.Artifact.Size {
		t.Errorf("result %+v, manifest %+v", res, m)
	}
}

// TestArchiveCancelled: a cancelled step stops, says so (not poison), and leaves no
// temporary file.
func TestArchiveCancelled(t *testing.T) {
	a, dir := newService(t)
	stage(t, dir, "files", map[string]string{"a": strings.Repeat("x", 1<<20)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := a.archive(ctx, job, contracts.ArchiveArgs{From: "files", Name: "x.tar.zst"})
	var se *contracts.StepError
	if !errors.Is(err, context.Canceled) || errors.As(err, &se) {
		t.Errorf("cancelled: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, job))
	if len(entries) != 1 {
		t.Errorf("job staging holds %v", entries)
	}
}

// TestArchiveIOErrorRetryable: an input file the service cannot read is an I/O error:
// retryable, not poison, and no temporary file stays.
func TestArchiveIOErrorRetryable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads files whatever their mode")
	}
	a, dir := newService(t)
	stage(t, dir, "files", map[string]string{"secret": "x"})
	if err := os.Chmod(filepath.Join(dir, job, "files", "secret"), 0); err != nil {
		t.Fatal(err)
	}
	_, err := a.archive(context.Background(), job, contracts.ArchiveArgs{From: "files", Name: "x.tar.zst"})
	var se *contracts.StepError
	if err == nil || errors.As(err, &se) || !errors.Is(err, syscall.EACCES) {
		t.Errorf("unreadable file: %v, want a plain (retryable) permission error", err)
	}
}
