package remote

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// forwardFile writes local into f in odd-sized pieces, as a compressor would, and
// returns how many bytes Write accepted before failing (with its error).
func forwardFile(t *testing.T, f *Forward, local string, stopAt int64) (int64, error) {
	t.Helper()
	in, err := os.Open(local)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	buf := make([]byte, 17<<10+1)
	var n int64
	for stopAt < 0 || n < stopAt {
		k, rerr := in.Read(buf)
		if k > 0 {
			w, err := f.Write(buf[:k])
			n += int64(w)
			if err != nil {
				return n, err
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			t.Fatal(rerr)
		}
	}
	return n, nil
}

func forwardEnv(t *testing.T, opts sshtest.Options) (*env, string, string, Upload) {
	e := newEnv(t, opts)
	local := filepath.Join(t.TempDir(), "update.tar.zst")
	write(t, local, 24<<20+12345)
	dest := filepath.Join(e.dir, "dest")
	if err := os.Mkdir(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	e.chown(dest)
	return e, local, dest, upload(t, local, dest, "update.tar.zst", "job1")
}

// A forward lands the bytes under the push's temporary name, checked by the host's
// hash as they land; Put then renames that file into place without sending or
// hashing it again. A forwarded file changed since is not trusted: Put sends it anew.
func TestForwardLandsForPut(t *testing.T) {
	for _, python := range []bool{true, false} {
		name := map[bool]string{true: "python", false: "shell"}[python]
		t.Run(name, func(t *testing.T) {
			withFollower(t, python)
			e, local, dest, u := forwardEnv(t, sshtest.Options{})
			c := e.open(Options{})
			final, part := filepath.Join(dest, u.Name), filepath.Join(dest, u.TempName())
			stop := watch(final, u.Size)
			f, err := c.StartForward(context.Background(), Upload{Dir: dest, Name: u.Name, Tag: u.Tag})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := forwardFile(t, f, local, -1); err != nil {
				t.Fatal(err)
			}
			landed, err := f.Finish(context.Background(), u.Size, u.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			if bad := stop(); len(bad) > 0 {
				t.Fatalf("the final name held sizes %v during the forward", bad)
			}
			if _, err := os.Stat(final); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a forward wrote the final name: %v", err)
			}
			if got := fileSHA(t, part); got != u.SHA256 || landed.SHA256 != u.SHA256 || landed.Size != u.Size {
				t.Fatalf("forwarded %s (landed %+v), want %s", got, landed, u.SHA256)
			}

			// Put: nothing sent, renamed into place.
			u.Landed = &landed
			var sent atomic.Int64
			prog := &Progress{}
			if err := c.Put(context.Background(), u, prog, &sent); err != nil {
				t.Fatal(err)
			}
			if sent.Load() != 0 || prog.Done.Load() != u.Size {
				t.Errorf("put of a forwarded file sent %d bytes, reported %d done; want 0 and %d", sent.Load(), prog.Done.Load(), u.Size)
			}
			if got := fileSHA(t, final); got != u.SHA256 {
				t.Fatalf("landed sha %s, want %s", got, u.SHA256)
			}
			if _, err := os.Stat(part); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("temporary file left: %v", err)
			}

			// Forward again, then change the landed file (same size, a later time):
			// Put must not trust it.
			os.Remove(final)
			f, err = c.StartForward(context.Background(), Upload{Dir: dest, Name: u.Name, Tag: u.Tag})
			if err != nil {
				t.Fatal(err)
			}
			forwardFile(t, f, local, -1)
			if landed, err = f.Finish(context.Background(), u.Size, u.SHA256); err != nil {
				t.Fatal(err)
			}
			w, _ := os.OpenFile(part, os.O_WRONLY, 0)
			w.WriteAt([]byte{^readByte(t, part, 10)}, 10)
			w.Close()
			later := time.Unix(landed.MTime+5, 0)
			os.Chtimes(part, later, later)
			u.Landed = &landed
			sent.Store(0)
			if err := c.Put(context.Background(), u, nil, &sent); err != nil {
				t.Fatal(err)
			}
			if sent.Load() != u.Size {
				t.Errorf("put of a changed forward sent %d bytes, want all %d", sent.Load(), u.Size)
			}
			if got := fileSHA(t, final); got != u.SHA256 {
				t.Fatalf("landed sha %s, want %s", got, u.SHA256)
			}
		})
	}
}

// Bytes that do not hash to the finished file's sum fail the forward (ErrMismatch),
// and an abandoned forward (the bundle failed) leaves no temporary file either.
func TestForwardMismatchAndAbort(t *testing.T) {
	withFollower(t, true)
	e, local, dest, u := forwardEnv(t, sshtest.Options{})
	c := e.open(Options{})
	part := filepath.Join(dest, u.TempName())

	f, err := c.StartForward(context.Background(), Upload{Dir: dest, Name: u.Name, Tag: u.Tag})
	if err != nil {
		t.Fatal(err)
	}
	forwardFile(t, f, local, -1)
	wrong := u.SHA256[:63] + map[bool]string{true: "1", false: "0"}[u.SHA256[63] == '0']
	if _, err := f.Finish(context.Background(), u.Size, wrong); !errors.Is(err, ErrMismatch) {
		t.Fatalf("finish with another sum: %v, want ErrMismatch", err)
	}
	if _, err := os.Stat(part); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left after a mismatch: %v", err)
	}

	f, err = c.StartForward(context.Background(), Upload{Dir: dest, Name: u.Name, Tag: u.Tag})
	if err != nil {
		t.Fatal(err)
	}
	forwardFile(t, f, local, u.Size/2)
	f.Abort()
	if _, err := os.Stat(part); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left after an abort: %v", err)
	}
	if entries, _ := os.ReadDir(dest); len(entries) != 0 {
		t.Fatalf("destination holds %d entries after the forwards, want none", len(entries))
	}
	// The connection still works: the forward's sessions are closed.
	if err := c.Put(context.Background(), u, nil, new(atomic.Int64)); err != nil {
		t.Fatal(err)
	}
}

// A forward cut at about half stops accepting writes (the producer goes on without
// it) and keeps its temporary file; the push then resumes it from the verified prefix.
func TestForwardCutResumesInPut(t *testing.T) {
	withFollower(t, true)
	e, local, dest, u := forwardEnv(t, sshtest.Options{})
	client := e.dial()
	c, err := Open(client, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.StartForward(context.Background(), Upload{Dir: dest, Name: u.Name, Tag: u.Tag})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for f.Sent() < u.Size/2 {
			time.Sleep(time.Millisecond)
		}
		client.Close()
	}()
	n, werr := forwardFile(t, f, local, -1)
	if werr == nil {
		t.Fatalf("all %d bytes accepted by a forward cut at half", n)
	}
	if _, err := f.Finish(context.Background(), u.Size, u.SHA256); !errors.Is(err, ErrConnection) {
		t.Fatalf("finish after the cut: %v, want ErrConnection", err)
	}
	fi, err := os.Stat(filepath.Join(dest, u.TempName()))
	if err != nil {
		t.Fatalf("no temporary file to resume: %v", err)
	}
	var sent atomic.Int64
	if err := e.open(Options{}).Put(context.Background(), u, nil, &sent); err != nil {
		t.Fatal(err)
	}
	t.Logf("forward accepted %d, temporary file had %d, put sent %d of %d", n, fi.Size(), sent.Load(), u.Size)
	if sent.Load() == 0 || sent.Load() > u.Size-fi.Size()+int64(DefaultMaxPacket*DefaultRequestsPerFile) {
		t.Errorf("put sent %d of %d bytes after a forward of %d: it did not resume", sent.Load(), u.Size, fi.Size())
	}
	if got := fileSHA(t, filepath.Join(dest, u.Name)); got != u.SHA256 {
		t.Fatalf("landed sha %s, want %s", got, u.SHA256)
	}
}

// A host that runs no commands cannot hash the file as it lands: no forward, and
// nothing written.
func TestForwardNeedsExec(t *testing.T) {
	e, _, dest, u := forwardEnv(t, sshtest.Options{Config: []string{"ForceCommand internal-sftp"}})
	c := e.open(Options{})
	if _, err := c.StartForward(context.Background(), Upload{Dir: dest, Name: u.Name, Tag: u.Tag}); !errors.Is(err, ErrNoForward) {
		t.Fatalf("forward to an SFTP-only login: %v, want ErrNoForward", err)
	}
	if entries, _ := os.ReadDir(dest); len(entries) != 0 {
		t.Fatalf("destination holds %d entries, want none", len(entries))
	}
}

// The spool hands the reader exactly what the writer wrote, across its wrap-around,
// whatever the sizes on either side; a reader that goes away unblocks a writer
// waiting on a full spool, and the writer's end is the reader's EOF.
func TestSpool(t *testing.T) {
	s := newSpool(1000) // small: every write wraps
	want := make([]byte, 1<<20)
	for i := range want {
		want[i] = byte(i*7 + i>>10)
	}
	go func() {
		for p, n := want, 1; len(p) > 0; n = n*5%1999 + 1 {
			k := min(n, len(p))
			if w, err := s.Write(p[:k]); err != nil || w != k {
				t.Errorf("write %d: %d, %v", k, w, err)
				return
			}
			p = p[k:]
		}
		s.closeWrite()
	}()
	var got []byte
	buf := make([]byte, 1777)
	for n := 1; ; n = n*3%1777 + 1 {
		k, err := s.Read(buf[:n])
		got = append(got, buf[:k]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != len(want) || string(got) != string(want) {
		t.Fatalf("read %d bytes, want the %d written, the same", len(got), len(want))
	}

	s = newSpool(10)
	done := make(chan error, 1)
	go func() { _, err := s.Write(make([]byte, 25)); done <- err }()
	time.Sleep(20 * time.Millisecond) // the writer waits on the full spool
	gone := errors.New("reader gone")
	s.closeRead(gone)
	select {
	case err := <-done:
		if !errors.Is(err, gone) {
			t.Fatalf("blocked write after the reader went: %v, want its error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a writer on a full spool stayed blocked after the reader went")
	}
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, gone) {
		t.Fatalf("read after closeRead: %v", err)
	}
}
