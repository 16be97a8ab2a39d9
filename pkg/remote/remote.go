// Package remote moves files to, from and on a host over one SSH connection: SFTP for
// the bytes, and — where the host allows commands — a few POSIX commands run over an
// exec session (cp for server-side copies, sha256sum to verify what landed).
//
// It is tuned the way SFTP has to be to be fast: 255 KiB packets against OpenSSH, many
// requests in flight per file (pkg/sftp's concurrent ReadFrom/WriteTo fast paths are
// never hidden behind a wrapper), several files in flight for trees of small files.
//
// Every write is restartable: files land under a temporary name, are verified (size and
// SHA-256) and are then renamed into place, and an interrupted transfer resumes from the
// verified prefix of its temporary file.
package remote

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/ferrydesk/ferry/pkg/sshdial"
)

// Errors of this package; test with errors.Is. Their messages name the path.
var (
	// ErrNotFound: a source path does not exist or a glob matched nothing.
	ErrNotFound = errors.New("not found")
	// ErrOutsideRoots: a path resolves outside the host's allowed roots.
	ErrOutsideRoots = errors.New("outside the host's allowed roots")
	// ErrInvalidPath: a path that can never be valid (empty, NUL byte, escapes its base).
	ErrInvalidPath = errors.New("invalid path")
	// ErrVerify: what landed (or what is staged) does not match its manifest.
	ErrVerify = errors.New("verification failed")
	// ErrRemoteWrite: the host refused a write (disk full, quota, read-only file system).
	ErrRemoteWrite = errors.New("remote write failed (disk full?)")
	// ErrConnection: the SSH connection or the SFTP channel ended mid-operation
	// (retryable: a retry resumes).
	ErrConnection = errors.New("connection lost")
)

// ErrPermission: the host refused a write for want of permission. It is an
// ErrRemoteWrite (errors.Is holds) that does not send the operator looking for a full
// disk.
var ErrPermission error = permissionError{}

type permissionError struct{}

func (permissionError) Error() string        { return "remote write refused (permission denied)" }
func (permissionError) Is(target error) bool { return target == ErrRemoteWrite }

// Defaults of Options.
const (
	DefaultMaxPacket       = 255 * 1024 // OpenSSH's sftp-server accepts 256 KiB messages
	DefaultRequestsPerFile = 16
	DefaultFilesInFlight   = 32
	DefaultLargeInFlight   = 4
)

// Options tune a Conn. The zero value takes the defaults.
type Options struct {
	// MaxPacket is the SFTP data size per request against OpenSSH servers (default
	// 255 KiB); other servers get pkg/sftp's checked 32 KiB.
	MaxPacket int
	// RequestsPerFile is how many SFTP requests one file keeps in flight (default 16:
	// 4 MiB, twice what one channel's window lets travel at once; more only holds memory).
	RequestsPerFile int
	// FilesInFlight is how many files a tree transfer moves at once (default 32).
	FilesInFlight int
	// LargeInFlight is how many of those may be large — more than RequestsPerFile
	// full requests, so that each holds its whole window of buffers (default 4:
	// 16 MiB of buffers; 32 large files would hold 128 MiB, and a link full with 4
	// moves no faster with more).
	LargeInFlight int
	// NoExec never runs commands on the host: copies stream through SFTP and
	// verification reads files back.
	NoExec bool
	// Lanes is how many SFTP sessions of the connection a large file is pulled over
	// at once on a long link (default 4; 1 never splits). See pullLanes.
	Lanes int
	// LanesFromRTT is the round trip from which lanes are used (default 3 ms).
	LanesFromRTT time.Duration
}

func (o Options) withDefaults() Options {
	if o.MaxPacket <= 0 {
		o.MaxPacket = DefaultMaxPacket
	}
	if o.RequestsPerFile <= 0 {
		o.RequestsPerFile = DefaultRequestsPerFile
	}
	if o.FilesInFlight <= 0 {
		o.FilesInFlight = DefaultFilesInFlight
	}
	if o.LargeInFlight <= 0 {
		o.LargeInFlight = DefaultLargeInFlight
	}
	if o.Lanes <= 0 {
		o.Lanes = DefaultLanes
	}
	if o.LanesFromRTT <= 0 {
		o.LanesFromRTT = DefaultLanesFromRTT
	}
	return o
}

// Conn is an SFTP client, and optionally a command runner, on one SSH connection.
// It is safe for concurrent use.
type Conn struct {
	ssh  *sshdial.Client
	sftp *sftp.Client
	opts Options
	home string
	rtt  func() time.Duration // measured on first use (see useLanes)

	sftpOpts  []sftp.ClientOption // for the sessions of lanes
	lanesOnce sync.Once
	lanes     []*sftp.Client

	large chan struct{} // a slot per large file in flight (Options.LargeInFlight)

	execOnce sync.Once
	execOK   bool
	tarOK    bool // GNU tar runs on the host (learnt with execOK)
	streamOK bool // cat and tail run on the host (learnt with execOK)
	// hashStdin hashes standard input on the host: OpenSSL's, which uses the CPU's SHA
	// instructions, where the host has it (Debian's sha256sum does not: 4.7 s against
	// 1.0 s per GiB on the benchmark machine), else sha256sum.
	hashStdin string
}

// Open starts the SFTP subsystem on c and learns the login's home directory.
func Open(c *sshdial.Client, opts Options) (*Conn, error) {
	opts = opts.withDefaults()
	sopts := []sftp.ClientOption{
		sftp.UseConcurrentReads(true),
		sftp.UseConcurrentWrites(true),
		sftp.MaxConcurrentRequestsPerFile(opts.RequestsPerFile),
		sftp.UseFstat(true),
	}
	if strings.Contains(c.Info().ServerVersion, "OpenSSH") {
		sopts = append(sopts, sftp.MaxPacketUnchecked(opts.MaxPacket))
	}
	sc, err := sftp.NewClient(c.SSH(), sopts...)
	if err != nil {
		return nil, wrapConn(c, "starting sftp", err)
	}
	home, err := sc.RealPath(".")
	if err != nil {
		sc.Close()
		return nil, wrapConn(c, "sftp realpath .", err)
	}
	rtt := sync.OnceValue(func() time.Duration { return measureRTT(sc, home) })
	return &Conn{ssh: c, sftp: sc, opts: opts, home: home, rtt: rtt, sftpOpts: sopts,
		large: make(chan struct{}, opts.LargeInFlight)}, nil
}

// Close ends the SFTP sessions (not the SSH connection).
func (c *Conn) Close() error {
	c.closeLanes()
	return c.sftp.Close()
}

// SFTP returns the SFTP client.
func (c *Conn) SFTP() *sftp.Client { return c.sftp }

// Home is the login's home directory, where relative paths start.
func (c *Conn) Home() string { return c.home }

// CanExec reports whether commands run on the host: an exec session answers a probe
// with the expected output and cp, head and sha256sum exist. A host that forces
// internal-sftp, or whose login shell is not POSIX, answers no.
func (c *Conn) CanExec(ctx context.Context) bool {
	if c.opts.NoExec {
		return false
	}
	c.execOnce.Do(func() {
		var out bytes.Buffer
		// One round trip also learns what else the host offers: OpenSSL for hashing,
		// GNU tar for many small files (see pullTar), cat and tail for large ones
		// (see streamFile).
		err := c.run(ctx, "command -v cp >/dev/null && command -v head >/dev/null && command -v sha256sum >/dev/null && echo ferry-exec-ok && "+
			"{ command -v openssl >/dev/null && echo ferry-openssl || true; } && "+
			"{ command -v cat >/dev/null && command -v tail >/dev/null && echo ferry-stream || true; } && "+
			`{ case "$(tar --version 2>/dev/null)" in *"GNU tar"*) echo ferry-gnu-tar;; esac; }`, &out, nil)
		lines := strings.Fields(out.String())
		c.execOK = err == nil && len(lines) > 0 && lines[0] == "ferry-exec-ok"
		c.hashStdin = "sha256sum"
		if !c.execOK {
			return
		}
		for _, l := range lines[1:] {
			switch l {
			case "ferry-openssl":
				c.hashStdin = "openssl dgst -sha256 -r"
			case "ferry-gnu-tar":
				c.tarOK = true
			case "ferry-stream":
				c.streamOK = true
			}
		}
	})
	return c.execOK
}

// run runs cmd on the host; stdout (if set) receives its output, stdin (if set) feeds it.
// A non-zero exit becomes an error carrying the command's stderr.
func (c *Conn) run(ctx context.Context, cmd string, stdout io.Writer, stdin io.Reader) error {
	s, err := c.ssh.NewSession()
	if err != nil {
		return wrapConn(c.ssh, "exec", err)
	}
	defer s.Close()
	var stderr limitedBuffer
	s.Stdout, s.Stderr, s.Stdin = stdout, &stderr, stdin
	if stdout == nil {
		s.Stdout = io.Discard
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(cmd) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
	if err != nil {
		var exit *ssh.ExitError
		if errors.As(err, &exit) {
			return &CommandError{Status: exit.ExitStatus(), Stderr: strings.TrimSpace(stderr.String())}
		}
		return wrapConn(c.ssh, "exec", err)
	}
	return nil
}

// CommandError is a command that exited non-zero.
type CommandError struct {
	Status int
	Stderr string
}

func (e *CommandError) Error() string {
	if e.Stderr == "" {
		return "exit status " + strconv.Itoa(e.Status)
	}
	return e.Stderr
}

// limitedBuffer keeps the first 8 KiB written to it. A command's stderr is copied into
// it by the session's own goroutine, so it may be read while the command still runs.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := 8<<10 - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Quote quotes s for a POSIX shell: it is wrapped in single quotes, and each single
// quote inside closes the quoting, is escaped with a backslash, and reopens it.
func Quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// SHA256 returns the hex SHA-256 of the first n bytes of the remote file p (all of it
// when n < 0): sha256sum over exec when the host allows it, else read back over SFTP.
func (c *Conn) SHA256(ctx context.Context, p string, n int64) (string, error) {
	if c.CanExec(ctx) {
		cmd := c.hashStdin + " < " + Quote(p)
		if n >= 0 {
			cmd = "head -c " + strconv.FormatInt(n, 10) + " -- " + Quote(p) + " | " + c.hashStdin
		}
		var out bytes.Buffer
		if err := c.run(ctx, cmd, &out, nil); err != nil {
			return "", fmt.Errorf("sha256 of %s: %w", p, err)
		}
		sum, _, _ := strings.Cut(strings.TrimPrefix(out.String(), `\`), " ")
		if len(sum) != 64 {
			return "", fmt.Errorf("sha256 of %s: unexpected output %q", p, out.String())
		}
		return sum, nil
	}
	f, err := c.sftp.Open(p)
	if err != nil {
		return "", c.pathErr("open", p, err)
	}
	defer f.Close()
	h := sha256.New()
	var w io.Writer = h
	if n >= 0 {
		w = &limitWriter{w: h, n: n}
	}
	if _, err := f.WriteTo(w); err != nil && !errors.Is(err, errLimit) {
		return "", c.pathErr("read", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sha256Many returns the SHA-256 of each remote file, in order: sha256sum in batches
// over exec, else read back over SFTP, several files at once.
func (c *Conn) sha256Many(ctx context.Context, paths []string) ([]string, error) {
	sums := make([]string, len(paths))
	if c.CanExec(ctx) {
		for start := 0; start < len(paths); {
			end, size := start, 0
			for end < len(paths) && (end == start || size+len(paths[end]) < 64<<10) {
				size += len(paths[end]) + 3
				end++
			}
			var cmd strings.Builder
			cmd.WriteString("sha256sum --")
			for _, p := range paths[start:end] {
				cmd.WriteString(" " + Quote(p))
			}
			var out bytes.Buffer
			if err := c.run(ctx, cmd.String(), &out, nil); err != nil {
				return nil, fmt.Errorf("sha256 of %d files in %s: %w", end-start, path.Dir(paths[start]), err)
			}
			lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
			if len(lines) != end-start {
				return nil, fmt.Errorf("sha256 of %d files in %s: %d lines of output", end-start, path.Dir(paths[start]), len(lines))
			}
			for i, l := range lines {
				sums[start+i], _, _ = strings.Cut(strings.TrimPrefix(l, `\`), " ")
			}
			start = end
		}
		return sums, nil
	}
	err := c.each(ctx, len(paths), func(i int) error {
		s, err := c.SHA256(ctx, paths[i], -1)
		sums[i] = s
		return err
	})
	return sums, err
}

// each runs fn(0..n-1), FilesInFlight at a time, and returns the first error.
func (c *Conn) each(ctx context.Context, n int, fn func(i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, c.opts.FilesInFlight)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(i); err != nil {
				once.Do(func() { first = err; cancel(err) })
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return context.Cause(ctx)
}

// admit waits, for a file of size bytes that fills its window of requests, until
// fewer than LargeInFlight such files are in flight on c; release undoes it. Smaller
// files pass at once.
func (c *Conn) admit(ctx context.Context, size int64) (release func(), err error) {
	if size <= int64(c.opts.RequestsPerFile)*int64(c.opts.MaxPacket) {
		return func() {}, nil
	}
	select {
	case c.large <- struct{}{}:
		return func() { <-c.large }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// pathErr wraps an SFTP error on path p: the connection's end when it ended,
// ErrNotFound for a missing file, ErrRemoteWrite for a failed write.
func (c *Conn) pathErr(op, p string, err error) error {
	if err == nil {
		return nil
	}
	if e := connErr(c.ssh, err); e != nil {
		return fmt.Errorf("%s %s: %w", op, p, e)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s %s: %w", op, p, ErrNotFound)
	}
	return fmt.Errorf("%s %s: %w", op, p, err)
}

// writeErr wraps an error writing remote path p: ErrConnection, ErrPermission or
// ErrRemoteWrite.
func (c *Conn) writeErr(p string, err error) error {
	if e := connErr(c.ssh, err); e != nil {
		return fmt.Errorf("writing %s: %w", p, e)
	}
	var se *sftp.StatusError
	if errors.Is(err, fs.ErrPermission) || errors.As(err, &se) && se.FxCode() == sftp.ErrSSHFxPermissionDenied {
		return fmt.Errorf("%w: %s: %v", ErrPermission, p, err)
	}
	return fmt.Errorf("%w: %s: %v", ErrRemoteWrite, p, err)
}

// connErr returns an error wrapping ErrConnection (and the connection's own error) when
// err means the SSH connection or SFTP channel ended, else nil.
func connErr(c *sshdial.Client, err error) error {
	if err == nil {
		return nil
	}
	lost := errors.Is(err, sftp.ErrSSHFxConnectionLost) || errors.Is(err, sftp.ErrSSHFxNoConnection) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrClosed) ||
		// The session's channel closed without the command's status: the connection
		// is going down (the watcher may not know yet), or the server dropped it.
		errors.As(err, new(*ssh.ExitMissingError))
	if cerr := c.Err(); cerr != nil {
		return &connectionError{err: cerr}
	}
	if lost {
		return &connectionError{err: err}
	}
	return nil
}

func wrapConn(c *sshdial.Client, op string, err error) error {
	if e := connErr(c, err); e != nil {
		return fmt.Errorf("%s: %w", op, e)
	}
	return fmt.Errorf("%s: %w", op, err)
}

type connectionError struct{ err error }

func (e *connectionError) Error() string   { return e.err.Error() }
func (e *connectionError) Unwrap() []error { return []error{ErrConnection, e.err} }

var errLimit = errors.New("limit reached")

// limitWriter passes the first n bytes to w, then fails with errLimit: it caps a
// source's WriteTo (which keeps its concurrent fast path) at a listed size.
type limitWriter struct {
	w io.Writer
	n int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errLimit
	}
	short := int64(len(p)) > l.n
	if short {
		p = p[:l.n]
	}
	n, err := l.w.Write(p)
	l.n -= int64(n)
	if err == nil && short {
		err = errLimit
	}
	return n, err
}

// Progress counts the bytes of an operation as it runs; read it from another
// goroutine (e.g. to report progress every few hundred milliseconds).
type Progress struct {
	Done  atomic.Int64 // bytes moved so far, this attempt included what resumed
	Total atomic.Int64 // bytes to move in all, when known
}

func (p *Progress) add(n int64) {
	if p != nil {
		p.Done.Add(n)
	}
}

func (p *Progress) setTotal(n int64) {
	if p != nil {
		p.Total.Store(n)
	}
}

// countingWriter counts into a Progress; as the destination of a WriteTo it never hides
// the source's fast path.
type countingWriter struct {
	w    io.Writer
	prog *Progress
	sent *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.prog.add(int64(n))
	c.sent.Add(int64(n))
	return n, err
}

// sizedReader counts what is read and tells pkg/sftp's ReadFrom how much remains
// (Size), so the upload keeps its concurrent-writes fast path.
type sizedReader struct {
	r    io.Reader
	size int64
	prog *Progress
	sent *atomic.Int64
}

func (s *sizedReader) Size() int64 { return s.size }

func (s *sizedReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.prog.add(int64(n))
	s.sent.Add(int64(n))
	return n, err
}

// Result of a transfer.
type Result struct {
	// Paths where files landed (remote paths for copies and pushes, staged paths
	// relative to the job's staging directory for pulls).
	Paths []string
	// Bytes is the size of everything that landed.
	Bytes int64
	// Sent is what this call moved over the wire (less than Bytes after a resume or
	// when files were in place already).
	Sent int64
	// Files is how many regular files landed.
	Files int
}
