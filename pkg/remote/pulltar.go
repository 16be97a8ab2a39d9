package remote

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Many small files cost SFTP three round trips each (open, read, close), however many
// are in flight; a tar stream over one exec session costs one for all of them. Pull
// sends files of at most tarMaxFile bytes through tar when there are at least
// tarMinFiles of them and the host has GNU tar; larger files keep SFTP's concurrent
// reads, which fill a long link better than one channel.
const (
	tarMinFiles = 16
	tarMaxFile  = 256 << 10
	// tarLanders write the files a tar stream brings, several at once: on a slow
	// file system creating, stamping and renaming a small file costs more than its
	// bytes. Each holds at most one file (≤ tarMaxFile) in memory.
	tarLanders = 8
)

// canTar reports whether the host runs GNU tar over exec (needed for --null -T -),
// as learnt by CanExec's probe.
func (c *Conn) canTar(ctx context.Context) bool {
	return c.CanExec(ctx) && c.tarOK
}

// splitForTar returns the files Pull sends through tar and those it reads over SFTP.
func (c *Conn) splitForTar(ctx context.Context, files []pullFile) (viaTar, viaSFTP []pullFile) {
	for _, f := range files {
		if f.size <= tarMaxFile {
			viaTar = append(viaTar, f)
		} else {
			viaSFTP = append(viaSFTP, f)
		}
	}
	if len(viaTar) < tarMinFiles || !c.canTar(ctx) {
		return nil, files
	}
	return viaTar, viaSFTP
}

// pullTar lands files below root from one `tar -c` run on the host. The stream is
// not trusted: an entry must be a regular file that was asked for, and each lands at
// most its listed size (a file growing meanwhile is captured up to it), tarLanders
// files at a time (see lander). A file already in place (same size and
// modification time, from an earlier attempt) is not asked for again.
func (c *Conn) pullTar(ctx context.Context, root *os.Root, files []pullFile, prog *Progress, sent *atomic.Int64) error {
	want := map[string]pullFile{} // tar member name → file
	var list bytes.Buffer
	for _, f := range files {
		if inPlace(root, f) {
			prog.add(f.size)
			continue
		}
		name := strings.TrimPrefix(f.remote, "/")
		if _, dup := want[name]; dup {
			continue
		}
		want[name] = f
		list.WriteString(name)
		list.WriteByte(0)
	}
	if len(want) == 0 {
		return nil
	}

	s, err := c.ssh.NewSession()
	if err != nil {
		return wrapConn(c.ssh, "exec", err)
	}
	defer s.Close()
	var stderr limitedBuffer
	s.Stdin, s.Stderr = &list, &stderr
	stdout, err := s.StdoutPipe()
	if err != nil {
		return wrapConn(c.ssh, "exec", err)
	}
	// Names are read from stdin, NUL-separated and relative to /, so none is taken
	// for an option and GNU tar does not warn about leading slashes.
	if err := s.Start("tar -C / --null --no-recursion --no-unquote --verbatim-files-from -T - -cf -"); err != nil {
		return wrapConn(c.ssh, "exec", err)
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()

	// What landed is removed again unless the run ends well: GNU tar pads a file
	// that shrank under it with zeros and says so only at the end.
	type job struct {
		f    pullFile
		data []byte
	}
	jobs := make(chan job, tarLanders)
	land := newLander(root)
	defer land.close()
	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu     sync.Mutex
		landed []string
		wg     sync.WaitGroup
	)
	for range tarLanders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if lctx.Err() != nil {
					continue
				}
				if err := land.land(j.f, j.data); err != nil {
					cancel(err)
					continue
				}
				prog.add(j.f.size)
				sent.Add(j.f.size)
				mu.Lock()
				landed = append(landed, j.f.rel)
				mu.Unlock()
			}
		}()
	}
	var finishOnce sync.Once
	finish := func() { finishOnce.Do(func() { close(jobs); wg.Wait() }) }
	ok := false
	defer func() {
		finish()
		if !ok {
			for _, rel := range landed {
				_ = root.Remove(filepath.FromSlash(rel))
			}
		}
	}()

	tr := tar.NewReader(stdout)
	for lctx.Err() == nil {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return c.tarErr(ctx, fmt.Errorf("tar stream from the host: %w (tar said: %s)", err, stderr.String()))
		}
		f, asked := want[hdr.Name]
		if !asked || hdr.Typeflag != tar.TypeReg {
			return fmt.Errorf("%w: tar on the host sent %q (type %q), which was not asked for", ErrInvalidPath, hdr.Name, hdr.Typeflag)
		}
		delete(want, hdr.Name)
		if hdr.Size < f.size {
			return shrank(f, hdr.Size)
		}
		data := make([]byte, f.size)
		if _, err := io.ReadFull(tr, data); err != nil {
			return c.tarErr(ctx, fmt.Errorf("reading %s from the tar stream: %w", f.remote, err))
		}
		select {
		case jobs <- job{f, data}:
		case <-lctx.Done():
		}
	}
	finish()
	if lctx.Err() != nil {
		return c.tarErr(ctx, context.Cause(lctx))
	}
	_, _ = io.Copy(io.Discard, stdout)
	err = s.Wait()
	var exit interface{ ExitStatus() int }
	// GNU tar exits 1 when a file changed while it was read: a growing log, captured
	// up to its listed size above. Anything else is the host's tar failing.
	if err != nil && !(errors.As(err, &exit) && exit.ExitStatus() == 1) {
		if terr := c.tarErr(ctx, err); terr != err { // cancelled, or the connection ended
			return terr
		}
		if len(want) == 0 {
			return fmt.Errorf("tar on the host: %v: %s", err, stderr.String())
		}
	}
	for name, f := range want { // a file asked for that tar did not send
		return fmt.Errorf("%s vanished while being pulled (tar said: %s): %w", f.remote, firstLine(stderr.String(), name), ErrNotFound)
	}
	ok = true
	return nil
}

// lander writes the files of a tar stream below root. Directories are opened once,
// through root (so none leads outside it), and each file is created in its directory
// with raw system calls: no runtime poller registration, no extra fcntl, O_NOFOLLOW on
// the one name component. For thousands of small files these calls are the cost.
type lander struct {
	root  *os.Root
	umask fs.FileMode

	mu   sync.Mutex
	dirs map[string]*os.File
}

func newLander(root *os.Root) *lander {
	return &lander{root: root, umask: processUmask(), dirs: map[string]*os.File{}}
}

// processUmask is the process's file mode creation mask, read from /proc without
// setting it: umask(2) would change it for every goroutine creating files meanwhile
// (all services share one process in ferry dev). Where it cannot be read it is taken
// as taking every bit, so that each file's mode is set explicitly. Read once a pull.
func processUmask() fs.FileMode {
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "Umask:"); ok {
				if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					return fs.FileMode(m)
				}
			}
		}
	}
	return 0o777
}

// dir returns the open directory d (slash-separated, "." for root).
func (l *lander) dir(d string) (*os.File, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f, ok := l.dirs[d]; ok {
		return f, nil
	}
	f, err := l.root.Open(filepath.FromSlash(d))
	if err != nil {
		return nil, err
	}
	l.dirs[d] = f
	return f, nil
}

// close closes the directories.
func (l *lander) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for d, f := range l.dirs {
		_ = f.Close()
		delete(l.dirs, d)
	}
}

// land writes data to f's place, then its mode (only where the umask took bits away)
// and, last, its modification time. There is no temporary name: a file counts as
// pulled only when its size and modification time are the listing's (see inPlace),
// which a file cut short by a crash never has, and nothing reads staging before the
// pull step ended. Creating, renaming and stamping thousands of small files cost more
// than their bytes.
func (l *lander) land(f pullFile, data []byte) error {
	d, err := l.dir(path.Dir(f.rel))
	if err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	perm := f.mode | 0o600
	if err := landAt(int(d.Fd()), path.Base(f.rel), data, perm, perm&l.umask != 0, f.mtime); err != nil {
		return fmt.Errorf("staging: %s: %w", f.rel, err)
	}
	return nil
}

// landAt creates name in the directory dirfd (never following a link there) with
// data, mode perm (set again with fchmod when chmod) and modification time mtime.
func landAt(dirfd int, name string, data []byte, perm fs.FileMode, chmod bool, mtime time.Time) (err error) {
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC|unix.O_NOFOLLOW, uint32(perm))
	if err != nil {
		return err
	}
	defer func() {
		if cerr := unix.Close(fd); err == nil {
			err = cerr
		}
	}()
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		data = data[n:]
	}
	if chmod {
		if err := unix.Fchmod(fd, uint32(perm)); err != nil {
			return err
		}
	}
	tv := unix.NsecToTimeval(mtime.UnixNano())
	return unix.Futimes(fd, []unix.Timeval{tv, tv})
}

// tarErr makes err the caller's cancellation or a lost connection where it is one.
func (c *Conn) tarErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if cerr := connErr(c.ssh, err); cerr != nil {
		return fmt.Errorf("tar stream: %w", cerr)
	}
	return err
}

// firstLine returns the line of s that mentions name, else s's first line.
func firstLine(s, name string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for _, l := range lines {
		if strings.Contains(l, name) {
			return l
		}
	}
	return lines[0]
}
