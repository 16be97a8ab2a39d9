package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/sshtest"
)

func (e *env) rel(p string) string {
	e.t.Helper()
	home := filepath.Dir(e.dir)
	r, err := filepath.Rel(home, p)
	if err != nil {
		e.t.Fatal(err)
	}
	return filepath.ToSlash(r)
}

// A tree with nested directories, 2,000 small files and a 64 MiB file, plus a glob,
// lands in staging byte for byte; pulling again moves nothing.
func TestPullTreeAndGlob(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	tree := filepath.Join(e.dir, "src", "tree")
	for i := range 2000 {
		write(t, filepath.Join(tree, "small", fmt.Sprintf("d%02d", i%20), "sub", fmt.Sprintf("f%04d.txt", i)), int64(1+i%4096))
	}
	write(t, filepath.Join(tree, "big.bin"), 64<<20)
	write(t, filepath.Join(e.dir, "src", "logs", "app1.log"), 1000)
	write(t, filepath.Join(e.dir, "src", "logs", "app2.log"), 2000)
	write(t, filepath.Join(e.dir, "src", "logs", "notes.txt"), 10)
	if err := os.Symlink("/etc/shadow", filepath.Join(tree, "link")); err != nil {
		t.Fatal(err)
	}
	// Empty directories come with the tree, each with its mode and time.
	dirTime := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	emptyDirs := map[string]fs.FileMode{"empty": 0o750, "small/d00/cache": 0o770}
	for d, mode := range emptyDirs {
		p := filepath.Join(tree, filepath.FromSlash(d))
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, dirTime, dirTime); err != nil {
			t.Fatal(err)
		}
	}
	e.chown(e.dir)
	c := e.open(Options{})
	roots, err := c.Roots(nil)
	if err != nil {
		t.Fatal(err)
	}
	into := filepath.Join(t.TempDir(), "files")
	spec := PullSpec{Paths: []string{e.rel(tree), e.rel(filepath.Join(e.dir, "src", "logs")) + "/*.log"}, Dir: into}
	prog := &Progress{}
	start := time.Now()
	res, err := c.Pull(context.Background(), roots, spec, prog)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	want := treeSums(t, tree)
	want["app1.log"] = fileSHA(t, filepath.Join(e.dir, "src", "logs", "app1.log"))
	want["app2.log"] = fileSHA(t, filepath.Join(e.dir, "src", "logs", "app2.log"))
	got := treeSums(t, into)
	if len(got) != len(want) || res.Files != len(want) {
		t.Fatalf("staged %d files (result %d), want %d", len(got), res.Files, len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("%s: staged sha %q, want %q", k, got[k], v)
		}
	}
	if prog.Done.Load() != res.Bytes || prog.Total.Load() != res.Bytes || res.Sent != res.Bytes {
		t.Errorf("progress %d/%d, result %+v", prog.Done.Load(), prog.Total.Load(), res.Bytes)
	}
	for d, mode := range emptyDirs {
		fi, err := os.Stat(filepath.Join(into, filepath.FromSlash(d)))
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != mode || !fi.ModTime().Equal(dirTime) {
			t.Errorf("empty directory %s staged as %v (%v), want mode %v and time %v", d, fi, err, mode, dirTime)
		}
	}
	t.Logf("pulled %d files, %d bytes in %s (%.1f MB/s, race detector on)", res.Files, res.Bytes, took, float64(res.Bytes)/took.Seconds()/1e6)

	again, err := c.Pull(context.Background(), roots, spec, nil)
	if err != nil || again.Sent != 0 || again.Files != res.Files {
		t.Fatalf("second pull: %+v, %v; want nothing sent", again, err)
	}
}

// With Links, a link that stays inside the pulled tree is staged as a link, and one
// leading out fails the listing naming it before anything is staged; without, links
// are skipped.
func TestPullLinks(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	tree := filepath.Join(e.dir, "update")
	write(t, filepath.Join(tree, "lib", "libapp.so.1"), 100)
	links := map[string]string{"lib/libapp.so": "libapp.so.1", "current": "lib", "lib/up": ".."}
	for p, target := range links {
		if err := os.Symlink(target, filepath.Join(tree, filepath.FromSlash(p))); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(tree, "lib", "passwd")); err != nil {
		t.Fatal(err)
	}
	e.chown(e.dir)
	c := e.open(Options{})
	roots, _ := c.Roots(nil)
	ctx := context.Background()

	into := filepath.Join(t.TempDir(), "files")
	_, err := c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(tree)}, Links: true, Dir: into}, nil)
	if !errors.Is(err, ErrInvalidPath) || !strings.Contains(err.Error(), filepath.Join(tree, "lib", "passwd")) || !strings.Contains(err.Error(), "leads outside the tree") {
		t.Fatalf("a link leading out: %v", err)
	}
	if entries, _ := os.ReadDir(into); len(entries) != 0 {
		t.Fatalf("staged %d entries before refusing", len(entries))
	}
	if err := os.Remove(filepath.Join(tree, "lib", "passwd")); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second time over what the first staged
		res, err := c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(tree)}, Links: true, Dir: into}, nil)
		if err != nil || res.Files != 1 {
			t.Fatalf("pull: %+v, %v", res, err)
		}
		for p, want := range links {
			if got, err := os.Readlink(filepath.Join(into, filepath.FromSlash(p))); err != nil || got != want {
				t.Errorf("%s: staged as a link to %q (%v), want %q", p, got, err, want)
			}
		}
	}
	skipped := t.TempDir()
	if _, err := c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(tree)}, Dir: skipped}, nil); err != nil {
		t.Fatal(err)
	}
	for p := range links {
		if _, err := os.Lstat(filepath.Join(skipped, filepath.FromSlash(p))); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("without Links, %s was staged (%v)", p, err)
		}
	}
}

// Since and MaxSize choose the files; a file growing during the pull is captured up to
// the size it had when listed.
func TestPullFiltersAndGrowingFile(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	logs := filepath.Join(e.dir, "logs")
	now := time.Now()
	for name, age := range map[string]time.Duration{"old.log": 48 * time.Hour, "new1.log": time.Minute, "new2.log": time.Hour, "new3.log": 2 * time.Hour} {
		p := filepath.Join(logs, name)
		write(t, p, 1000)
		if err := os.Chtimes(p, now.Add(-age), now.Add(-age)); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(logs, "rotated", "old.log.1"), 1000)
	if err := os.Chtimes(filepath.Join(logs, "rotated", "old.log.1"), now.Add(-72*time.Hour), now.Add(-72*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(logs, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.chown(e.dir)
	c := e.open(Options{})
	roots, _ := c.Roots(nil)
	ctx := context.Background()

	into := t.TempDir()
	res, err := c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(logs) + "/*.log"}, Since: 24 * time.Hour, MaxSize: 2500, Dir: into}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(res.Paths, ","); got != "new1.log,new2.log" || res.Bytes != 2000 {
		t.Fatalf("pulled %s (%d bytes), want the two newest within a day", got, res.Bytes)
	}
	// Filtered, a directory's tree brings only the directories of the files chosen.
	into = t.TempDir()
	if _, err := c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(logs)}, Since: 24 * time.Hour, Dir: into}, nil); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"rotated", "empty"} {
		if _, err := os.Lstat(filepath.Join(into, d)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("filtered pull staged the directory %s (%v)", d, err)
		}
	}

	_, err = c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(logs) + "/*.log"}, Since: time.Second, Dir: t.TempDir()}, nil)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("nothing new enough: %v, want ErrNotFound", err)
	}
	if res, err := c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(logs) + "/*.zip"}, AllowEmpty: true, Dir: t.TempDir()}, nil); err != nil || res.Files != 0 {
		t.Fatalf("allow empty: %+v %v", res, err)
	}
	if _, err := c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(logs) + "/*.zip"}, Dir: t.TempDir()}, nil); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "*.zip") {
		t.Fatalf("glob matching nothing: %v", err)
	}

	// Growing: an appender writes while the pull runs.
	grow := filepath.Join(e.dir, "grow.log")
	write(t, grow, 16<<20)
	e.chown(grow)
	into = t.TempDir()
	stop := appendWhile(t, grow)
	res, err = c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(grow)}, Dir: into}, nil)
	stop()
	if err != nil {
		t.Fatal(err)
	}
	staged, _ := os.ReadFile(filepath.Join(into, "grow.log"))
	final, _ := os.ReadFile(grow)
	if int64(len(staged)) != res.Bytes || len(staged) < 16<<20 || len(staged) >= len(final) || !bytes.Equal(staged, final[:len(staged)]) {
		t.Fatalf("staged %d bytes (listed %d) of a file now %d bytes: want exactly the prefix listed", len(staged), res.Bytes, len(final))
	}
}

// What a pull staged is on stable storage when Pull returns: the archive step may run
// after a power loss of the helpdesk, and must not read files the crash cut short.
func TestPullFlushesStaging(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	src := filepath.Join(e.dir, "src")
	write(t, filepath.Join(src, "big.bin"), 20<<20) // over SFTP, its writeback started on the way
	for i := range 40 {
		write(t, filepath.Join(src, "small", fmt.Sprintf("f%02d.log", i)), 5000) // in one tar stream
	}
	e.chown(e.dir)
	into := filepath.Join(t.TempDir(), "files")
	c := e.open(Options{})
	roots, err := c.Roots(nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Pull(context.Background(), roots, PullSpec{Paths: []string{e.rel(src)}, Dir: into}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Files != 41 {
		t.Fatalf("pulled %d files, want 41", res.Files)
	}
	checkFlushed(t, into, 41)
	// And read once by the next step: it is not left in the page cache either.
	if n := cachedBytes(t, filepath.Join(into, "big.bin")); n != 0 {
		t.Errorf("%d bytes of the staged big.bin are cached, want none", n)
	}
}

// Large files, each holding its whole window of request buffers, are pulled at most
// LargeInFlight at a time, however many files are in flight: 32 files of 10 MiB held
// 140 MiB of buffers before. sftp-server's log shows how many were open at once.
func TestPullBoundsLargeFilesInFlight(t *testing.T) {
	e := newEnv(t, sshtest.Options{SFTPLog: true})
	src := filepath.Join(e.dir, "logs")
	for i := range 12 {
		write(t, filepath.Join(src, fmt.Sprintf("app-%02d.log", i)), 5<<20) // over the 4 MiB window
	}
	e.chown(e.dir)
	c := e.open(Options{})
	roots, err := c.Roots(nil)
	if err != nil {
		t.Fatal(err)
	}
	into := filepath.Join(t.TempDir(), "logs")
	if _, err := c.Pull(context.Background(), roots, PullSpec{Paths: []string{e.rel(src) + "/*.log"}, Dir: into}, nil); err != nil {
		t.Fatal(err)
	}
	open, most, opened := 0, 0, 0
	for _, l := range strings.Split(e.sshd.SFTPLogText(), "\n") {
		switch {
		case strings.HasPrefix(l, `open "`+src+"/") && strings.Contains(l, "flags READ"):
			open++
			opened++
			most = max(most, open)
		case strings.HasPrefix(l, `close "`+src+"/"):
			open--
		}
	}
	if opened != 12 {
		t.Fatalf("the log shows %d files opened, want 12", opened)
	}
	if most > DefaultLargeInFlight {
		t.Errorf("%d large files open at once, want at most %d", most, DefaultLargeInFlight)
	}
	if got := treeSums(t, into); len(got) != 12 {
		t.Errorf("staged %d files, want 12", len(got))
	}
}
