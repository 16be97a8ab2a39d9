package staging

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func newDir(t *testing.T) (*Dir, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "staging")
	d, err := NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d, root
}

func write(t *testing.T, path string, n int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, make([]byte, n), 0o640); err != nil {
		t.Fatal(err)
	}
}

func TestDirLifecycle(t *testing.T) {
	ctx := context.Background()
	d, root := newDir(t)

	p, err := d.Dir("job-1")
	if err != nil {
		t.Fatal(err)
	}
	if p != filepath.Join(root, "job-1") {
		t.Errorf("Dir = %s", p)
	}
	if again, err := d.Dir("job-1"); err != nil || again != p {
		t.Errorf("Dir again = %s, %v", again, err)
	}
	write(t, filepath.Join(p, "a.bin"), 100)
	write(t, filepath.Join(p, "sub", "b.bin"), 50)
	if _, err := d.Dir("job-2"); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(root, "stray.tmp"), 7)

	jobs, err := d.List(ctx)
	if err != nil || !slices.Equal(jobs, []string{"job-1", "job-2"}) {
		t.Errorf("List = %v, %v", jobs, err)
	}
	if n, err := d.Usage(ctx); err != nil || n != 157 {
		t.Errorf("Usage = %d, %v; want 157", n, err)
	}

	if err := d.Remove(ctx, "job-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("job-1 still there: %v", err)
	}
	if err := d.Remove(ctx, "job-1"); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if err := d.Remove(ctx, "never-staged"); err != nil {
		t.Errorf("Remove of a job without staging: %v", err)
	}
	if jobs, _ := d.List(ctx); !slices.Equal(jobs, []string{"job-2"}) {
		t.Errorf("List after Remove = %v", jobs)
	}
}

func TestInvalidJobRefused(t *testing.T) {
	ctx := context.Background()
	d, root := newDir(t)
	outside := filepath.Join(filepath.Dir(root), "precious")
	write(t, filepath.Join(outside, "keep"), 1)
	for _, job := range []string{"", "..", "../precious", ".", "a/b", "/etc", "-x", "x y"} {
		if err := d.Remove(ctx, job); !errors.Is(err, ErrInvalidJob) {
			t.Errorf("Remove(%q) = %v, want ErrInvalidJob", job, err)
		}
		if _, err := d.Dir(job); !errors.Is(err, ErrInvalidJob) {
			t.Errorf("Dir(%q) = %v, want ErrInvalidJob", job, err)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Errorf("file outside staging touched: %v", err)
	}
}

func TestSymlinkNotFollowed(t *testing.T) {
	ctx := context.Background()
	d, root := newDir(t)
	outside := filepath.Join(filepath.Dir(root), "precious")
	write(t, filepath.Join(outside, "keep"), 1000)
	// A job "directory" that is a link to elsewhere: removing the job removes the link
	// only, and Dir refuses to hand it out.
	if err := os.Symlink(outside, filepath.Join(root, "job-link")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Dir("job-link"); err == nil {
		t.Error("Dir handed out a symbolic link")
	}
	if n, err := d.Usage(ctx); err != nil || n != 0 {
		t.Errorf("Usage followed a link: %d, %v", n, err)
	}
	if err := d.Remove(ctx, "job-link"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "job-link")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("link still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Errorf("target of the link removed: %v", err)
	}
}

func TestCancelled(t *testing.T) {
	d, _ := newDir(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Remove(ctx, "job-1"); !errors.Is(err, context.Canceled) {
		t.Errorf("Remove with a cancelled ctx = %v", err)
	}
}

func TestFilesystem(t *testing.T) {
	d, _ := newDir(t)
	size, avail, err := d.Filesystem()
	if err != nil {
		t.Fatal(err)
	}
	if size == 0 || avail > size {
		t.Errorf("Filesystem() = size %d, avail %d", size, avail)
	}
}
