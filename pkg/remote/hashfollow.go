package remote

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Verifying a pushed file by hashing it on the host after the upload reads it all once
// more: about a second per GiB, with the link idle. Put instead uploads a large file
// in segments and, while the next segment travels, has the host hash the segment
// already written and acknowledged, so that when the last write is acknowledged only
// the last segment remains to be hashed. What is hashed is read back from the file on
// the host, exactly as a separate check would.
//
// Behind the hash the host's copy is flushed and then dropped from its page cache, as
// the staging does here (pkg/staging): a pushed GiB does not push a GiB of the
// customer's own cache out of memory, and the host's next writes take the pages just
// freed instead of new ones. On this project's 2-core VM the host's writes into new
// pages cost 1.5-1.9 s of CPU per GiB in the update benchmark (perf), before this.
var (
	followMin     int64 = 64 << 20 // smaller files are hashed after the upload
	followSegment int64 = 32 << 20 // (variables: the tests make them small)
	followPython        = true     // false: the shell pipeline even where python3 runs
)

// followPy is the follower in Python (3.3 or later; sys.argv[1] is the file). Its
// output is the hex digest; a short read (the file shrank) exits non-zero.
const followPy = `import hashlib, os, sys, threading
fd = os.open(sys.argv[1], os.O_RDONLY)
flush = getattr(os, "fdatasync", os.fsync)
advise = getattr(os, "posix_fadvise", None)  # not on every system

def drop(end):
    if advise:
        advise(fd, 0, end, os.POSIX_FADV_DONTNEED)

cv = threading.Condition()
todo = []  # offsets hashed up to, for the thread behind; -1 ends it

def behind():
    while True:
        with cv:
            while not todo:
                cv.wait()
            end = todo[-1]
            del todo[:]
        if end < 0:
            return
        try:
            flush(fd)
            drop(end)
        except OSError:
            pass

def mark(end):
    with cv:
        todo.append(end)
        cv.notify()

t = threading.Thread(target=behind)
t.start()
h = hashlib.sha256()
off = 0
try:
    for line in sys.stdin:
        end = off + int(line)
        while off < end:
            b = os.pread(fd, min(1 << 20, end - off), off)
            if not b:
                sys.exit("%s: short read at %d" % (sys.argv[1], off))
            h.update(b)
            off += len(b)
        mark(off)
finally:
    mark(-1)
    t.join()
try:
    drop(0)  # length 0: to the end of the file
except OSError:
    pass
print(h.hexdigest())
`

// follower hashes a remote file on the host while it is written, in the order the
// caller acknowledges its prefixes: one exec session, fed the length of each newly
// acknowledged span on its standard input, that prints the SHA-256 of them all once its
// input ends.
//
// Where the host has python3, followPy does it in one process: each span is read from
// the file itself and hashed, while a thread behind it flushes the file (fdatasync)
// and drops what was hashed from the page cache (posix_fadvise). Elsewhere a shell
// pipeline of coreutils does the same:
//
//	exec 3<FILE; { while read n; do head -c "$n" <&3; { sync -d FILE; DROP SPAN; } & done; wait; DROP FILE; } | HASH
//
// DROP is GNU dd with iflag=nocache: for a span it reads the span once more (from the
// cache, just hashed) and drops it; for the file (count=0) it drops every clean page
// without reading. sync and dd fail quietly where the host's tools lack them. The sum
// comes after the last drop. Per pushed GiB on the benchmark VM (perf, whole machine)
// the pipeline costs 3.0 CPU-s — head 0.9, openssl reading the pipe 1.6, dd and sync
// 0.5 — and followPy 1.2, most of it SHA-256 itself (OpenSSL's, with the CPU's SHA
// instructions, in both).
type follower struct {
	s      *ssh.Session
	stdin  io.WriteCloser
	out    bytes.Buffer
	stderr limitedBuffer
	done   chan error
	fed    int64
}

// follow starts hashing p on the host; nil when the host runs no commands.
func (c *Conn) follow(ctx context.Context, p string) *follower {
	if !c.CanExec(ctx) {
		return nil
	}
	s, err := c.ssh.NewSession()
	if err != nil {
		return nil
	}
	f := &follower{s: s, done: make(chan error, 1)}
	s.Stdout, s.Stderr = &f.out, &f.stderr
	if f.stdin, err = s.StdinPipe(); err != nil {
		s.Close()
		return nil
	}
	// The pipeline: each acknowledged span also starts its way to the disk (sync -d
	// FILE: fdatasync, coreutils ≥ 8.24), so the fsync before the rename finds little
	// left: it took 0.3 s per GiB at the end; once flushed, the pages are dropped (dd:
	// coreutils ≥ 8.20).
	q := Quote(p)
	behind := `{ sync -d -- ` + q + ` && dd if=` + q + ` of=/dev/null bs=1M iflag=nocache,skip_bytes,count_bytes skip="$o" count="$n" status=none; } >/dev/null 2>&1 & o=$((o+n));`
	// At the end (the file flushed by then: sum comes after Put's fsync) one drop of
	// the whole file takes what the spans' drops left, such as a large folio
	// straddling two spans.
	last := `dd if=` + q + ` iflag=nocache count=0 status=none >/dev/null 2>&1;`
	cmd := "exec 3< " + q + ` && { o=0; while read -r n; do head -c "$n" <&3 || exit 1; ` + behind + ` done; wait; ` + last + ` } | ` + c.hashStdin
	if followPython { // followPy where the host has python3, else the pipeline
		cmd = "command -v python3 >/dev/null 2>&1 && exec python3 -c " + Quote(followPy) + " " + q + "; " + cmd
	}
	if err := s.Start(cmd); err != nil {
		s.Close()
		return nil
	}
	go func() { f.done <- s.Wait() }()
	return f
}

// feed lets the host hash the file up to offset (every write below it acknowledged).
func (f *follower) feed(offset int64) error {
	if offset <= f.fed {
		return nil
	}
	_, err := io.WriteString(f.stdin, strconv.FormatInt(offset-f.fed, 10)+"\n")
	f.fed = offset
	return err
}

// sum ends the input and returns the SHA-256 of everything fed.
func (f *follower) sum(ctx context.Context) (string, error) {
	_ = f.stdin.Close()
	select {
	case err := <-f.done:
		if err != nil {
			return "", fmt.Errorf("hashing on the host: %v: %s", err, f.stderr.String())
		}
	case <-ctx.Done():
		f.s.Close()
		return "", ctx.Err()
	}
	// "SUM", "SUM *stdin" (openssl -r) or "SUM  -" (sha256sum); a backslash before
	// it marks an escaped file name.
	sum, _, _ := strings.Cut(strings.TrimSpace(strings.TrimPrefix(f.out.String(), `\`)), " ")
	if len(sum) != 64 {
		return "", fmt.Errorf("hashing on the host: unexpected output %q", f.out.String())
	}
	return sum, nil
}

// close stops the session (after sum, or to abandon it).
func (f *follower) close() { f.s.Close() }
