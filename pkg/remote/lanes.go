package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrydesk/ferry/pkg/staging"
	"github.com/pkg/sftp"
)

// One SSH channel carries at most its window (2 MiB in golang.org/x/crypto/ssh and
// in OpenSSH) per round trip: 200 MB/s at 10 ms, whatever the link could do. On a
// link with that much latency Pull reads a large file over several SFTP sessions of
// the same SSH connection at once (lanes: no second login, one lease), each lane a
// window of its own. On a short link one session's concurrent reads are faster (no
// pause between pieces), so lanes are used only from a measured round trip up.
var (
	laneMinSize int64 = 64 << 20 // smaller files keep one session
	laneChunk   int64 = 4 << 20  // what one lane reads at a time (in flight per lane)
	// laneAhead times the lanes is how many pieces a push may have in flight past the
	// first one not yet acknowledged.
	laneAhead = 2

	// testHookPiece, when set, runs before a lane reads piece i (tests fail one).
	testHookPiece func(i int64) error
)

// Defaults of Options for lanes.
const (
	DefaultLanes        = 4
	DefaultLanesFromRTT = 3 * time.Millisecond
)

// measureRTT times a few cheap SFTP round trips and keeps the shortest.
func measureRTT(sc *sftp.Client, home string) time.Duration {
	best := time.Duration(-1)
	for range 3 {
		start := time.Now()
		if _, err := sc.Stat(home); err != nil {
			return best
		}
		if d := time.Since(start); best < 0 || d < best {
			best = d
		}
	}
	return best
}

// RTT is the shortest SFTP round trip, measured the first time it is asked for.
func (c *Conn) RTT() time.Duration { return c.rtt() }

// useLanes reports whether a file of n bytes is moved over lanes. The round trip is
// measured only for a file large enough to need it.
func (c *Conn) useLanes(n int64) bool {
	return c.opts.Lanes > 1 && n >= laneMinSize && c.rtt() >= c.opts.LanesFromRTT
}

// nextPiece hands a lane the next of pieces; ok is false when none is left, err set
// when ctx ended. testHookPiece runs on the piece handed out.
func nextPiece(ctx context.Context, next *atomic.Int64, pieces int64) (i int64, ok bool, err error) {
	if ctx.Err() != nil {
		return 0, false, context.Cause(ctx)
	}
	if i = next.Add(1) - 1; i >= pieces {
		return i, false, nil
	}
	if testHookPiece != nil {
		if err := testHookPiece(i); err != nil {
			return i, false, err
		}
	}
	return i, true, nil
}

// sessions returns the Conn's SFTP sessions for lanes, the first being its own,
// opening the others on first use. Where the host refuses more sessions, fewer lanes
// (possibly one) are used.
func (c *Conn) sessions() []*sftp.Client {
	c.lanesOnce.Do(func() {
		c.lanes = []*sftp.Client{c.sftp}
		for range c.opts.Lanes - 1 {
			sc, err := sftp.NewClient(c.ssh.SSH(), c.sftpOpts...)
			if err != nil {
				break // e.g. MaxSessions reached: go on with what is open
			}
			c.lanes = append(c.lanes, sc)
		}
	})
	return c.lanes
}

// closeLanes ends the extra sessions.
func (c *Conn) closeLanes() {
	c.lanesOnce.Do(func() {}) // no lanes opened from now on
	for _, sc := range c.lanes[min(1, len(c.lanes)):] {
		_ = sc.Close()
	}
}

// pullLanes reads f from offset to its listed size into out in laneChunk pieces, every
// lane taking the next piece as it finishes one, and writes each piece at its place.
// When it fails, out is cut back to the prefix that arrived whole, so that a retry
// resumes from there (pieces past a missing one are dropped: at most a few per lane).
func (c *Conn) pullLanes(ctx context.Context, f pullFile, out *os.File, offset int64, prog *Progress, sent *atomic.Int64) error {
	lanes := c.sessions()
	pieces := (f.size - offset + laneChunk - 1) / laneChunk
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		next     atomic.Int64 // the next piece to read
		mu       sync.Mutex
		whole    = make([]bool, pieces)
		complete int64 // pieces whole from the first on
		wg       sync.WaitGroup
	)
	drop := staging.NewDropBehind(out, offset) // see pkg/staging: staged data is read once
	for _, lane := range lanes[:min(int64(len(lanes)), pieces)] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.readPieces(ctx, lane, f, out, offset, pieces, &next, func(i int64, n int64) error {
				mu.Lock()
				whole[i] = true
				for complete < pieces && whole[complete] {
					complete++
				}
				prefix := min(f.size, offset+complete*laneChunk)
				mu.Unlock()
				prog.add(n)
				sent.Add(n)
				if err := drop.Advance(prefix); err != nil {
					return fmt.Errorf("staging: %w", err)
				}
				return nil
			}); err != nil {
				cancel(err)
			}
		}()
	}
	wg.Wait()
	err := context.Cause(ctx)
	if err == nil {
		if err := drop.Done(f.size); err != nil {
			return fmt.Errorf("staging: %w", err)
		}
		return nil
	}
	prefix := min(f.size, offset+complete*laneChunk)
	if terr := out.Truncate(prefix); terr != nil {
		return errors.Join(err, fmt.Errorf("staging: %w", terr))
	}
	return err
}

// readPieces is one lane of pullLanes: it reads pieces until none is left.
func (c *Conn) readPieces(ctx context.Context, lane *sftp.Client, f pullFile, out *os.File, offset, pieces int64, next *atomic.Int64, done func(i, n int64) error) error {
	in, err := lane.Open(f.remote)
	if err != nil {
		return c.pathErr("open", f.remote, err)
	}
	defer in.Close()
	buf := make([]byte, laneChunk)
	for {
		i, ok, err := nextPiece(ctx, next, pieces)
		if !ok {
			return err
		}
		at := offset + i*laneChunk
		n := min(laneChunk, f.size-at)
		// pkg/sftp's ReadAt splits a large read into concurrent requests.
		m, err := in.ReadAt(buf[:n], at)
		if int64(m) < n {
			if err != nil && !errors.Is(err, io.EOF) {
				return c.pathErr("reading", f.remote, err)
			}
			// Short at its end: the file shrank, or the session ended under the read
			// (which a closing session can also report as the end of the file).
			fi, serr := lane.Stat(f.remote)
			if serr != nil {
				return c.pathErr("reading", f.remote, serr)
			}
			if fi.Size() < at+n {
				return shrank(f, fi.Size())
			}
			return c.pathErr("reading", f.remote, io.ErrUnexpectedEOF)
		}
		if _, err := out.WriteAt(buf[:n], at); err != nil {
			return fmt.Errorf("staging: %w", err)
		}
		if err := done(i, n); err != nil {
			return err
		}
	}
}

// sendLanes writes local from offset to size into the remote file part (opened as
// out on the Conn's own session) in laneChunk pieces over every lane at once, each
// lane with pkg/sftp's concurrent writes within its piece. The follower, if any, is
// fed the prefix whose pieces are all acknowledged. It returns the bytes of the pieces
// that landed; a failure leaves holes after the first missing piece, which the retry's
// resumeOffset steps back over (see laneCandidates).
func (c *Conn) sendLanes(ctx context.Context, out *sftp.File, part string, local *os.File, offset, size int64, fol *follower, prog *Progress, sent *atomic.Int64) (int64, error) {
	lanes := c.sessions()
	// Pieces lie on whole multiples of laneChunk in the file (the first may start
	// later, at offset), whatever offset a resume began at: resumeOffset steps back
	// over those boundaries.
	first := offset / laneChunk
	pieces := (size+laneChunk-1)/laneChunk - first
	span := func(i int64) (at, n int64) {
		at = max(offset, (first+i)*laneChunk)
		return at, min(size, (first+i+1)*laneChunk) - at
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if fol != nil {
		fol.feed(offset)
	}
	var (
		next    atomic.Int64
		landed  atomic.Int64
		mu      sync.Mutex
		moved   = sync.NewCond(&mu)
		whole   = make([]bool, pieces)
		prefix  int64 // pieces below it all landed
		wg      sync.WaitGroup
		feedErr error
	)
	// A lane does not run further ahead than laneAhead pieces past the first one
	// missing, so that a cut leaves holes only there (see laneCandidates).
	ahead := int64(laneAhead * len(lanes))
	mayStart := func(i int64) bool {
		mu.Lock()
		defer mu.Unlock()
		for i >= prefix+ahead && ctx.Err() == nil {
			moved.Wait()
		}
		return ctx.Err() == nil
	}
	stop := context.AfterFunc(ctx, func() { mu.Lock(); moved.Broadcast(); mu.Unlock() })
	defer stop()
	pieceDone := func(i, n int64) {
		landed.Add(n)
		mu.Lock()
		defer mu.Unlock()
		whole[i] = true
		for prefix < pieces && whole[prefix] {
			prefix++
		}
		moved.Broadcast()
		if fol != nil && feedErr == nil {
			feedErr = fol.feed(max(offset, min(size, (first+prefix)*laneChunk)))
		}
	}
	for k, lane := range lanes[:min(int64(len(lanes)), pieces)] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := out
			if k > 0 {
				var err error
				if f, err = lane.OpenFile(part, os.O_WRONLY); err != nil {
					cancel(c.writeErr(part, err))
					return
				}
				defer f.Close()
			}
			if err := c.writePieces(ctx, f, local, pieces, span, &next, mayStart, prog, sent, pieceDone); err != nil {
				cancel(err)
			}
		}()
	}
	wg.Wait()
	return landed.Load(), context.Cause(ctx)
}

// writePieces is one lane of sendLanes: it writes pieces until none is left.
func (c *Conn) writePieces(ctx context.Context, f *sftp.File, local *os.File, pieces int64, span func(i int64) (at, n int64), next *atomic.Int64,
	mayStart func(i int64) bool, prog *Progress, sent *atomic.Int64, done func(i, n int64)) error {
	for {
		i, ok, err := nextPiece(ctx, next, pieces)
		if !ok {
			return err
		}
		if !mayStart(i) {
			return context.Cause(ctx)
		}
		at, n := span(i)
		if _, err := f.Seek(at, io.SeekStart); err != nil {
			return err
		}
		// sizedReader keeps ReadFrom's concurrent writes within the piece.
		m, err := f.ReadFrom(&sizedReader{r: io.NewSectionReader(local, at, n), size: n, prog: prog, sent: sent})
		if err != nil {
			return err
		}
		if m < n {
			return fmt.Errorf("%w: staged file shrank while being sent", ErrVerify)
		}
		done(i, n)
	}
}

// laneCandidates are the lengths resumeOffset tries, after the file's size, when a
// push over lanes may have been cut: the piece boundaries below it, back as far as
// lanes may run ahead of a missing piece.
func (c *Conn) laneCandidates(have, size int64) []int64 {
	if !c.useLanes(size) {
		return nil
	}
	var out []int64
	for b, j := have/laneChunk*laneChunk, 0; b > 0 && j <= laneAhead*c.opts.Lanes; b, j = b-laneChunk, j+1 {
		if b < have {
			out = append(out, b)
		}
	}
	return out
}
