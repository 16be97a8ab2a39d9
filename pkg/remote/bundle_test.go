package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/archive"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// bundleTo lists spec on c and bundles it into an archive file; it returns the
// manifest, the archive's path and Bundle's result.
func bundleTo(t *testing.T, c *Conn, roots *Roots, spec PullSpec, prog *Progress) (contracts.Manifest, string, Result, error) {
	t.Helper()
	ctx := context.Background()
	l, err := c.List(ctx, roots, spec)
	if err != nil {
		return contracts.Manifest{}, "", Result{}, err
	}
	p := filepath.Join(t.TempDir(), "bundle.tar.zst")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	aw, err := archive.NewWriter(f, l.Bytes, archive.Options{Name: "bundle.tar.zst"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Bundle(ctx, l, aw, prog)
	if err != nil {
		aw.Abort()
		return contracts.Manifest{}, p, res, err
	}
	m, err := aw.Close()
	return m, p, res, err
}

// bigBundle lists a 256 MiB file on a new host for a bundle.
func bigBundle(t *testing.T) (*env, *Conn, *Roots, *Listing, string) {
	t.Helper()
	e := newEnv(t, sshtest.Options{})
	big := filepath.Join(e.dir, "big.log")
	write(t, big, 256<<20)
	e.chown(e.dir)
	c := e.open(Options{})
	roots, _ := c.Roots(nil)
	l, err := c.List(context.Background(), roots, PullSpec{Paths: []string{e.rel(big)}})
	if err != nil {
		t.Fatal(err)
	}
	return e, c, roots, l, big
}

// afterBytes returns a Progress that calls f once n bytes were counted in it.
func afterBytes(n int64, f func()) *Progress {
	prog := &Progress{}
	go func() {
		for prog.Done.Load() < n {
			time.Sleep(time.Millisecond)
		}
		f()
	}()
	return prog
}

// discardSink is an archive of l's files that goes nowhere.
func discardSink(t *testing.T, l *Listing) *archive.Writer {
	t.Helper()
	aw, err := archive.NewWriter(io.Discard, l.Bytes, archive.Options{Name: "b.tar.zst"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(aw.Abort)
	return aw
}

// extract unpacks the archive at p, checked against m, into a new directory.
func extract(t *testing.T, p string, m contracts.Manifest) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if err := archive.Extract(context.Background(), f, root, m); err != nil {
		t.Fatalf("extract: %v", err)
	}
	return dir
}

// A bundle streamed from the host holds exactly what a pull of the same paths stages
// (nested directories, many small files, a large one, a glob), with modes and times,
// and its manifest says so; a link inside the tree stays out of both. Its bytes are
// those of an archive of the staged tree (directories included: each keeps its
// mode and time from the host), so a host without a shell, whose bundle is pulled and
// archived, gives the same bundle.
func TestBundleHoldsWhatAPullStages(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	tree := filepath.Join(e.dir, "src", "tree")
	for i := range 300 {
		write(t, filepath.Join(tree, fmt.Sprintf("d%02d", i%7), "sub", fmt.Sprintf("f%03d.txt", i)), int64(1+i*37%5000))
	}
	write(t, filepath.Join(tree, "big.bin"), 24<<20)
	write(t, filepath.Join(e.dir, "src", "logs", "app1.log"), 1000)
	write(t, filepath.Join(e.dir, "src", "logs", "app2.log.gz"), 2000)
	write(t, filepath.Join(e.dir, "src", "logs", "notes.txt"), 10)
	write(t, filepath.Join(tree, "odd name 'quoted' ü.txt"), 10)
	write(t, filepath.Join(tree, "-dash.txt"), 10)
	if err := os.Chmod(filepath.Join(e.dir, "src", "logs", "app1.log"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/shadow", filepath.Join(tree, "link")); err != nil {
		t.Fatal(err)
	}
	e.chown(e.dir)
	for i, d := range []string{"d00", "d03/sub", "d06", ""} {
		p := filepath.Join(tree, d)
		if err := os.Chmod(p, []fs.FileMode{0o750, 0o711, 0o555, 0o755}[i]); err != nil {
			t.Fatal(err)
		}
		mt := time.Date(2025, 3, 1+i, 10, 0, 0, 0, time.UTC)
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	c := e.open(Options{})
	if !c.CanStream(context.Background()) {
		t.Fatal("the test sshd runs GNU tar over exec: CanStream must hold")
	}
	roots, _ := c.Roots(nil)
	spec := PullSpec{Paths: []string{e.rel(tree), e.rel(filepath.Join(e.dir, "src", "logs")) + "/app*"}}
	prog := &Progress{}
	m, p, res, err := bundleTo(t, c, roots, spec, prog)
	if err != nil {
		t.Fatal(err)
	}
	spec.Dir = filepath.Join(t.TempDir(), "staged")
	pulled, err := c.Pull(context.Background(), roots, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, got := treeSums(t, spec.Dir), treeSums(t, extract(t, p, m))
	if len(got) != 305 || len(got) != len(want) || len(m.Files) != len(want) || res.Files != len(want) {
		t.Fatalf("bundle holds %d files (manifest %d, result %d), a pull stages %d", len(got), len(m.Files), res.Files, len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("%s: bundled sha %q, pulled %q", k, got[k], v)
		}
	}
	for _, f := range m.Files {
		fi, err := os.Stat(filepath.Join(spec.Dir, filepath.FromSlash(f.Path)))
		if err != nil {
			t.Fatal(err)
		}
		if fs := fi.Mode().Perm(); uint32(fs) != f.Mode || !fi.ModTime().Truncate(time.Second).Equal(f.MTime) {
			t.Errorf("%s: manifest mode %o, mtime %s; staged %o, %s", f.Path, f.Mode, f.MTime, fs, fi.ModTime())
		}
	}
	if res.Bytes != pulled.Bytes || res.Sent != res.Bytes || prog.Done.Load() != res.Bytes || prog.Total.Load() != res.Bytes {
		t.Errorf("result %+v, progress %d/%d; a pull moved %d bytes", res, prog.Done.Load(), prog.Total.Load(), pulled.Bytes)
	}
	for i, d := range []string{"d00", "d03/sub", "d06"} {
		fi, err := os.Stat(filepath.Join(spec.Dir, d))
		if err != nil {
			t.Fatal(err)
		}
		wantMode := []fs.FileMode{0o750, 0o711, 0o555}[i] | 0o700
		if mt := time.Date(2025, 3, 1+i, 10, 0, 0, 0, time.UTC); fi.Mode().Perm() != wantMode || !fi.ModTime().Equal(mt) {
			t.Errorf("staged %s: mode %o, mtime %s; want %o, %s (the host's)", d, fi.Mode().Perm(), fi.ModTime(), wantMode, mt)
		}
	}
	staged, err := os.OpenRoot(spec.Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer staged.Close()
	var buf bytes.Buffer
	sm, err := archive.Write(context.Background(), staged, &buf, archive.Options{Name: "bundle.tar.zst"})
	if err != nil {
		t.Fatal(err)
	}
	if sm.Artifact.SHA256 != m.Artifact.SHA256 {
		t.Errorf("the bundle (SHA-256 %s) differs from an archive of the pulled tree (%s)", m.Artifact.SHA256, sm.Artifact.SHA256)
	}
}

// A file growing while it is bundled is taken up to the size it had when listed.
func TestBundleGrowingFile(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	grow := filepath.Join(e.dir, "grow.log")
	write(t, grow, 16<<20)
	e.chown(e.dir)
	c := e.open(Options{})
	roots, _ := c.Roots(nil)
	stop := appendWhile(t, grow)
	m, p, res, err := bundleTo(t, c, roots, PullSpec{Paths: []string{e.rel(grow)}}, nil)
	stop()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(extract(t, p, m), "grow.log"))
	final, _ := os.ReadFile(grow)
	if int64(len(got)) != res.Bytes || len(got) < 16<<20 || len(got) >= len(final) || !bytes.Equal(got, final[:len(got)]) {
		t.Fatalf("bundled %d bytes (listed %d) of a file now %d bytes: want exactly the prefix listed", len(got), res.Bytes, len(final))
	}
}

// A file removed or cut short between the listing and the tar run fails the bundle,
// naming it: the archive is never completed from what remains.
func TestBundleVanishedOrShrunkFile(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	src := filepath.Join(e.dir, "many")
	for i := range 20 {
		write(t, filepath.Join(src, fmt.Sprintf("f%02d.log", i)), 1000)
	}
	e.chown(e.dir)
	c := e.open(Options{})
	roots, _ := c.Roots(nil)
	ctx := context.Background()
	spec := PullSpec{Paths: []string{e.rel(src) + "/*.log"}}
	l, err := c.List(ctx, roots, spec)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(src, "f07.log"))
	if _, err := c.Bundle(ctx, l, discardSink(t, l), nil); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "f07.log") {
		t.Fatalf("vanished file: %v, want ErrNotFound naming f07.log", err)
	}
	for _, last := range []bool{false, true} {
		l, err = c.List(ctx, roots, spec)
		if err != nil {
			t.Fatal(err)
		}
		name := "f03.log"
		if last {
			name = "f19.log" // the end of the stream
		}
		if err := os.Truncate(filepath.Join(src, name), 10); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Bundle(ctx, l, discardSink(t, l), nil); err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "shrank") {
			t.Fatalf("shrunk file: %v, want an error naming %s", err, name)
		}
		write(t, filepath.Join(src, name), 1000)
		e.chown(src)
	}
}

// A cancelled bundle stops at once and says so; an empty listing gives an empty
// archive; a login without commands cannot stream.
func TestBundleCancelEmptyAndNoExec(t *testing.T) {
	e, c, roots, l, big := bigBundle(t)
	ctx, cancel := context.WithCancel(context.Background())
	prog := afterBytes(8<<20, cancel)
	start := time.Now()
	if _, err := c.Bundle(ctx, l, discardSink(t, l), prog); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled bundle: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second || prog.Done.Load() == l.Bytes {
		t.Fatalf("cancelled bundle ran %s, read %d of %d bytes", d, prog.Done.Load(), l.Bytes)
	}
	// The connection is still good after the cancelled stream.
	if _, err := c.SHA256(context.Background(), big, 10); err != nil {
		t.Fatalf("after cancel: %v", err)
	}

	m, p, res, err := bundleTo(t, c, roots, PullSpec{Paths: []string{e.rel(e.dir) + "/*.none"}, AllowEmpty: true}, nil)
	if err != nil || !m.Empty || res.Files != 0 {
		t.Fatalf("empty bundle: %+v %+v %v", m, res, err)
	}
	if got := treeSums(t, extract(t, p, m)); len(got) != 0 {
		t.Fatalf("empty bundle holds %v", got)
	}
	if _, _, _, err := bundleTo(t, c, roots, PullSpec{Paths: []string{e.rel(e.dir) + "/*.none"}}, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("glob matching nothing: %v, want ErrNotFound", err)
	}
	if e.open(Options{NoExec: true}).CanStream(context.Background()) {
		t.Fatal("a connection without exec cannot stream")
	}
}

// The connection cut in the middle of a bundle fails it as a lost connection (which a
// retry mends), not as a file that shrank.
func TestBundleConnectionCut(t *testing.T) {
	e, c, _, l, _ := bigBundle(t)
	prog := afterBytes(8<<20, func() { e.sshd.SignalConnections(syscall.SIGKILL) })
	_, err := c.Bundle(context.Background(), l, discardSink(t, l), prog)
	if !errors.Is(err, ErrConnection) || strings.Contains(err.Error(), "shrank") {
		t.Fatalf("cut connection: %v, want ErrConnection", err)
	}
	if prog.Done.Load() >= l.Bytes {
		t.Fatalf("the whole file came before the cut (%d bytes)", prog.Done.Load())
	}
}
