package remote

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// countStreams counts the files Pull streams until the test ends, and calls change (if
// set) with each one's remote path before its stream starts.
func countStreams(t *testing.T, change func(p string)) *atomic.Int32 {
	t.Helper()
	var n atomic.Int32
	testHookStream = func(p string) {
		n.Add(1)
		if change != nil {
			change(p)
		}
	}
	t.Cleanup(func() { testHookStream = nil })
	return &n
}

// A large file is streamed from the host when it runs commands, with the same bytes,
// mode and modification time as through SFTP, flushed and not left in the page cache;
// small files, and every file of a login without exec, keep SFTP.
func TestPullStream(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	src := filepath.Join(e.dir, "src")
	big := filepath.Join(src, "big.bin")
	write(t, big, streamMinSize+12345)
	write(t, filepath.Join(src, "small.txt"), 1000)
	if err := os.Chmod(big, 0o640); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2026, 5, 4, 3, 2, 1, 0, time.UTC)
	if err := os.Chtimes(big, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	e.chown(e.dir)
	streams := countStreams(t, nil)

	for _, tc := range []struct {
		name    string
		opts    Options
		streams int32
	}{{"exec", Options{}, 1}, {"no exec", Options{NoExec: true}, 0}} {
		t.Run(tc.name, func(t *testing.T) {
			streams.Store(0)
			c := e.open(tc.opts)
			roots, _ := c.Roots(nil)
			into := t.TempDir()
			res, err := c.Pull(context.Background(), roots, PullSpec{Paths: []string{e.rel(src)}, Dir: into}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := streams.Load(); got != tc.streams {
				t.Errorf("%d files streamed, want %d", got, tc.streams)
			}
			if res.Files != 2 || res.Sent != streamMinSize+12345+1000 {
				t.Errorf("pulled %d files, %d bytes sent", res.Files, res.Sent)
			}
			// Checked before anything here reads the files.
			checkFlushed(t, into, 2)
			if n := cachedBytes(t, filepath.Join(into, "big.bin")); n != 0 {
				t.Errorf("%d bytes of the staged big.bin are cached, want none", n)
			}
			got := treeSums(t, into)
			for rel, sum := range treeSums(t, src) {
				if got[rel] != sum {
					t.Errorf("%s: staged SHA-256 %q, want %q", rel, got[rel], sum)
				}
			}
			fi, err := os.Stat(filepath.Join(into, "big.bin"))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) {
				t.Errorf("staged big.bin: mode %v, mtime %v; want 0640, %v", fi.Mode().Perm(), fi.ModTime(), mtime)
			}
		})
	}
}

// A stream cut at about half leaves what arrived in the temporary file; the retry
// streams only the rest (from the offset, checked by the bytes sent) and the file
// lands whole.
func TestPullStreamResumesAfterConnectionLoss(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	src := filepath.Join(e.dir, "big.bin")
	const size = 48 << 20
	write(t, src, size)
	e.chown(e.dir)
	streams := countStreams(t, nil)
	into := t.TempDir()

	part, _ := e.pullCut(Options{}, src, into, size)
	if part == 0 || part >= size {
		t.Fatalf("temporary file of %d bytes after the cut", part)
	}
	e.pullResume(Options{}, src, into, size, part)
	if streams.Load() != 2 {
		t.Errorf("%d streams, want 2 (the cut one and the retry)", streams.Load())
	}
}

// The file changes between its listing and its stream: grown, it is captured up to
// its listed size; shrunk or gone, the pull fails naming it and nothing lands.
func TestPullStreamFileChanges(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	const size = 10 << 20
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, p string)
		want   string // in the error; "" for success
		is     error
	}{
		{"grown", func(t *testing.T, p string) {
			f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.Write(make([]byte, 3<<20)); err != nil {
				t.Fatal(err)
			}
		}, "", nil},
		{"shrunk", func(t *testing.T, p string) {
			if err := os.Truncate(p, size/2); err != nil {
				t.Fatal(err)
			}
		}, "shrank to 5242880 bytes", nil},
		{"gone", func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}, "reading ", ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := filepath.Join(e.dir, tc.name+".bin")
			write(t, src, size)
			e.chown(e.dir)
			want := fileSHA(t, src)
			countStreams(t, func(p string) { tc.change(t, p) })
			c := e.open(Options{})
			roots, _ := c.Roots(nil)
			into := t.TempDir()
			_, err := c.Pull(context.Background(), roots, PullSpec{Paths: []string{e.rel(src)}, Dir: into}, nil)
			staged := filepath.Join(into, tc.name+".bin")
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got := fileSHA(t, staged); got != want {
					t.Errorf("staged SHA-256 %s, want that of the %d bytes listed (%s)", got, size, want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), src) {
				t.Fatalf("pull: %v; want an error naming %s with %q", err, src, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("pull: %v; want %v", err, tc.is)
			}
			if _, err := os.Stat(staged); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s staged under its final name after a failed pull", tc.name)
			}
		})
	}
}

// A host that runs commands but has no tail (here a PATH of only the other tools Conn
// uses) gets its large files read over SFTP: the probe tells, not a failed stream.
func TestPullStreamNeedsCatAndTail(t *testing.T) {
	bin := t.TempDir()
	for _, tool := range []string{"cp", "head", "sha256sum", "cat", "tar"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	wrapper := filepath.Join(t.TempDir(), "session")
	if err := os.WriteFile(wrapper, []byte(`#!/bin/sh
case "$SSH_ORIGINAL_COMMAND" in internal-sftp) exec `+sshtest.SFTPServerPath+`;; esac
PATH=`+bin+`; export PATH
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
`), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{bin, filepath.Dir(bin), filepath.Dir(wrapper)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e := newEnv(t, sshtest.Options{Config: []string{"ForceCommand " + wrapper}})
	src := filepath.Join(e.dir, "big.bin")
	write(t, src, streamMinSize)
	e.chown(e.dir)
	streams := countStreams(t, nil)
	c := e.open(Options{})
	ctx := context.Background()
	if !c.CanExec(ctx) {
		t.Fatal("the host runs no commands")
	}
	roots, _ := c.Roots(nil)
	into := t.TempDir()
	if _, err := c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(src)}, Dir: into}, nil); err != nil {
		t.Fatal(err)
	}
	if streams.Load() != 0 {
		t.Errorf("%d files streamed from a host without tail", streams.Load())
	}
	if got, want := fileSHA(t, filepath.Join(into, "big.bin")), fileSHA(t, src); got != want {
		t.Fatalf("pulled SHA-256 %s, want %s", got, want)
	}
}
