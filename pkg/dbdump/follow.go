package dbdump

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"
)

// Reading a finished PostgreSQL dump back whole takes seconds per GiB, after the dump
// and with the machine otherwise idle. Dump instead has pg_restore read the dump while
// pg_dump writes it: pg_dump writes the custom format front to back (header, table of
// contents, then each table's data as it streams out of the server) and, once done,
// seeks back only to fill in the data offsets of the table of contents, bytes of the
// same length in place. The follower hands pg_restore the bytes as they land, so every
// data block is decompressed and read to its end by the time pg_dump exits; then
// `pg_restore --list` reads the final table of contents.

// followPoll is how often the follower looks for more bytes at the end of the file.
const followPoll = 20 * time.Millisecond

// growingFile reads a file that another process is writing: at its end it waits for
// more until written is closed, then reads what is left and ends.
type growingFile struct {
	ctx     context.Context
	f       *os.File
	written <-chan struct{}
	final   bool
}

func (g *growingFile) Read(p []byte) (int, error) {
	for {
		n, err := g.f.Read(p)
		if n > 0 {
			return n, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if g.final {
			return 0, io.EOF
		}
		select {
		case <-g.written:
			g.final = true // one more pass reads what the writer wrote last
		case <-g.ctx.Done():
			return 0, g.ctx.Err()
		case <-time.After(followPoll):
		}
	}
}

// followVerify is pg_restore reading a dump while it is written.
type followVerify struct {
	cancel  context.CancelFunc
	written chan struct{}
	exited  chan struct{} // closed once pg_restore exited; err is then its status
	err     error
	stderr  *boundedBuffer
	f       *os.File
}

// startFollowVerify starts pg_restore (bin) on the dump at path as it grows.
func startFollowVerify(ctx context.Context, bin, path, home string) (*followVerify, error) {
	// (Created if pg_dump has not yet: it opens the file for writing, truncating it.)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, &Error{Kind: ErrFailed, Msg: fmt.Sprintf("following the dump: %v", err)}
	}
	ctx, cancel := context.WithCancel(ctx)
	v := &followVerify{cancel: cancel, written: make(chan struct{}), exited: make(chan struct{}),
		stderr: &boundedBuffer{max: maxStderr}, f: f}
	cmd := command(ctx, bin, []string{"--file=/dev/null", "--exit-on-error"}, baseEnv(home), v.stderr)
	cmd.Stdin = &growingFile{ctx: ctx, f: f, written: v.written}
	if err := cmd.Start(); err != nil {
		cancel()
		_ = f.Close()
		return nil, &Error{Kind: ErrTool, Msg: fmt.Sprintf("starting %s: %v", bin, err)}
	}
	go func() { v.err = cmd.Wait(); close(v.exited) }()
	return v, nil
}

// finish tells the follower the dump is complete and waits for pg_restore's verdict.
func (v *followVerify) finish(ctx context.Context) error {
	close(v.written)
	defer v.stop()
	select {
	case <-v.exited:
		err := v.err
		if err == nil {
			return nil
		}
		var ee *exec.ExitError
		if ctx.Err() != nil || !errors.As(err, &ee) {
			return fmt.Errorf("verifying the dump stopped: %w", errors.Join(ctx.Err(), err))
		}
		return incomplete(notWhole, err, v.stderr)
	case <-ctx.Done():
		return fmt.Errorf("verifying the dump stopped: %w", ctx.Err())
	}
}

// stop kills pg_restore if it still runs, waits for it and releases the file. It may
// be called more than once.
func (v *followVerify) stop() {
	v.cancel()
	<-v.exited // the context kills the process group; command's WaitDelay bounds the rest
	_ = v.f.Close()
}

// checkTOC reads the final table of contents of the dump at path.
func checkTOC(ctx context.Context, bin, path, home string) error {
	return runRestore(ctx, bin, []string{"--list", "--file=/dev/null", path}, home,
		"the dump's table of contents does not read back")
}

// notWhole says a dump failed pg_restore's full read.
const notWhole = "the dump does not read back whole"

// runRestore runs pg_restore (bin) with args and HOME in a private directory; a
// failure is ErrIncomplete, saying what did not read back.
func runRestore(ctx context.Context, bin string, args []string, home, what string) error {
	stderr := &boundedBuffer{max: maxStderr}
	err := command(ctx, bin, args, baseEnv(home), stderr).Run()
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("verifying the dump stopped: %w", cerr)
	}
	if err != nil {
		return incomplete(what, err, stderr)
	}
	return nil
}

func incomplete(what string, err error, stderr *boundedBuffer) error {
	return &Error{Kind: ErrIncomplete, Msg: fmt.Sprintf("%s (pg_restore: %v): %s", what, exitStatus(err), excerpt(stderr.String(), Password{}))}
}
