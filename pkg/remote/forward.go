package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pkg/sftp"
)

// A forward is a push that starts while its file is still being made: the archive of
// an update goes to the customer as it comes out of the compressor, instead of after
// the whole bundle is staged. The bytes land under the upload's temporary name, the
// host hashing each acknowledged span as Put's follower does; Finish compares that
// hash with the finished archive's and flushes the file. The temporary name is all a
// forward writes: the push step renames it into place (see Upload.Landed), or resumes
// it from its verified prefix if the forward did not finish.
//
// The sender reads from a bounded buffer that the producer fills, so a slow link slows
// the producer rather than growing memory; a forward that fails (a lost connection, a
// full disk) only stops forwarding, and the producer goes on.

// forwardBuffer is the buffer between the producer and the sender.
const forwardBuffer = 1 << 20

// ErrNoForward: the host cannot take a forward (it runs no commands to hash the file
// as it lands; reading it back would cost more than the forward saves).
var ErrNoForward = errors.New("host runs no commands: no forward")

// Landed is a temporary file a forward completed: its size, SHA-256 (hashed on the
// host as it landed, equal to the manifest's) and modification time (Unix seconds).
type Landed struct {
	Size   int64
	SHA256 string
	MTime  int64
}

// Forward is a push in progress; see StartForward.
type Forward struct {
	c     *Conn
	part  string
	spool *spool
	fol   *follower
	done  chan error // the sender's result
	sent  atomic.Int64
	pos   int64 // bytes acknowledged, set by the sender before done
	ended bool
}

// StartForward opens u's temporary file in u.Dir (truncated: a forward starts from the
// beginning) and starts sending what Write is given; u.Size and u.SHA256 are not known
// yet (see Finish). The host must run commands (ErrNoForward).
func (c *Conn) StartForward(ctx context.Context, u Upload) (*Forward, error) {
	if u.Tag == "" || strings.ContainsAny(u.Name+u.Tag, "/\x00") || u.Name == "." || u.Name == ".." {
		return nil, fmt.Errorf("%w: forward %q (tag %q)", ErrInvalidPath, u.Name, u.Tag)
	}
	if !c.CanExec(ctx) {
		return nil, ErrNoForward
	}
	part := path.Join(u.Dir, u.TempName())
	out, err := c.sftp.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return nil, c.failWrite(part, err)
	}
	fol := c.follow(ctx, part)
	if fol == nil {
		_ = out.Close()
		_ = c.sftp.Remove(part)
		return nil, ErrNoForward
	}
	f := &Forward{c: c, part: part, spool: newSpool(forwardBuffer), fol: fol, done: make(chan error, 1)}
	go f.send(out)
	return f, nil
}

// Part is the remote path being written.
func (f *Forward) Part() string { return f.part }

// Sent is the bytes handed to the SFTP session so far.
func (f *Forward) Sent() int64 { return f.sent.Load() }

// send writes the spool into out in follower segments, feeding the host's hash each
// acknowledged one, until the spool ends; it then flushes and closes out.
func (f *Forward) send(out *sftp.File) {
	var err error
	defer func() {
		if err != nil {
			f.spool.closeRead(err) // the producer's next Write fails fast
		}
		f.done <- err
	}()
	for {
		var m int64
		m, err = out.ReadFrom(&sizedReader{r: io.LimitReader(f.spool, followSegment), size: followSegment, sent: &f.sent})
		f.pos += m
		if err != nil {
			_ = out.Close()
			return
		}
		if err = f.fol.feed(f.pos); err != nil {
			_ = out.Close()
			err = fmt.Errorf("hashing %s on the host: %w", f.part, err)
			return
		}
		if m < followSegment {
			break
		}
	}
	if err = f.c.syncFile(out); err != nil {
		_ = out.Close()
		return
	}
	err = out.Close()
}

// Write queues p for the host; it fails once the forward has failed (the producer
// should then stop writing to it, and go on).
func (f *Forward) Write(p []byte) (int, error) { return f.spool.Write(p) }

// Finish waits for everything written to land and checks it against size and sum (the
// finished file's): the bytes acknowledged, the host's hash of them, the file flushed.
// It returns what landed for Upload.Landed. On any failure the temporary file is
// removed, unless the connection was lost (then the push resumes it).
func (f *Forward) Finish(ctx context.Context, size int64, sum string) (Landed, error) {
	f.ended = true
	f.spool.closeWrite()
	var err error
	select {
	case err = <-f.done:
	case <-ctx.Done():
		f.abort(ctx.Err())
		return Landed{}, ctx.Err()
	}
	defer f.fol.close()
	if err != nil {
		return Landed{}, f.c.failWrite(f.part, err)
	}
	if f.pos != size {
		_ = f.c.sftp.Remove(f.part)
		return Landed{}, fmt.Errorf("%w: forwarded %d bytes of %s, the file has %d", ErrMismatch, f.pos, f.part, size)
	}
	got, err := f.fol.sum(ctx)
	if err != nil {
		if cerr := f.c.ssh.Err(); cerr != nil {
			return Landed{}, fmt.Errorf("hashing %s on the host: %w", f.part, &connectionError{err: cerr})
		}
		_ = f.c.sftp.Remove(f.part)
		return Landed{}, err
	}
	fi, err := f.c.sftp.Stat(f.part)
	if err != nil {
		return Landed{}, f.c.pathErr("stat", f.part, err)
	}
	if got != sum || fi.Size() != size {
		_ = f.c.sftp.Remove(f.part)
		return Landed{}, fmt.Errorf("%w: %s is %d bytes with SHA-256 %s on the host, expected %d bytes with %s", ErrMismatch, f.part, fi.Size(), got, size, sum)
	}
	return Landed{Size: size, SHA256: sum, MTime: fi.ModTime().Unix()}, nil
}

// Abort stops a forward whose file will not be finished (the producer failed or was
// cancelled) and removes the temporary file where the connection allows. It does
// nothing after Finish.
func (f *Forward) Abort() {
	if !f.ended {
		f.abort(errForwardAborted)
	}
}

var errForwardAborted = errors.New("forward aborted")

func (f *Forward) abort(why error) {
	f.ended = true
	f.spool.closeRead(why)
	<-f.done
	f.fol.close()
	if f.c.ssh.Err() == nil {
		_ = f.c.sftp.Remove(f.part)
	}
}

// spool is a bounded byte buffer between one writer and one reader: Write blocks while
// it is full, Read while it is empty.
type spool struct {
	mu     sync.Mutex
	cond   sync.Cond
	buf    []byte
	r, n   int   // read position, bytes buffered
	closed bool  // the writer is done: Read returns io.EOF once empty
	rerr   error // the reader is gone: Write and Read fail with it
}

func newSpool(size int) *spool {
	s := &spool{buf: make([]byte, size)}
	s.cond.L = &s.mu
	return s
}

func (s *spool) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	written := 0
	for len(p) > 0 {
		for s.n == len(s.buf) && s.rerr == nil {
			s.cond.Wait()
		}
		if s.rerr != nil {
			return written, s.rerr
		}
		w := (s.r + s.n) % len(s.buf)
		end := len(s.buf)
		if w < s.r {
			end = s.r
		}
		k := copy(s.buf[w:end], p)
		s.n += k
		p = p[k:]
		written += k
		s.cond.Broadcast()
	}
	return written, nil
}

func (s *spool) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.n == 0 && !s.closed && s.rerr == nil {
		s.cond.Wait()
	}
	if s.rerr != nil {
		return 0, s.rerr
	}
	if s.n == 0 {
		return 0, io.EOF
	}
	k := copy(p, s.buf[s.r:min(s.r+s.n, len(s.buf))])
	s.r = (s.r + k) % len(s.buf)
	s.n -= k
	s.cond.Broadcast()
	return k, nil
}

func (s *spool) closeWrite() {
	s.mu.Lock()
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

func (s *spool) closeRead(err error) {
	s.mu.Lock()
	if s.rerr == nil {
		s.rerr = err
	}
	s.cond.Broadcast()
	s.mu.Unlock()
}
