package remote

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// smallLanes makes lanes apply to files of a few MiB, in 1 MiB pieces, whatever the
// round trip (loopback's is far below the default threshold).
func smallLanes(t *testing.T) Options {
	t.Helper()
	size, chunk := laneMinSize, laneChunk
	laneMinSize, laneChunk = 4<<20, 1<<20
	t.Cleanup(func() { laneMinSize, laneChunk = size, chunk })
	return Options{LanesFromRTT: time.Nanosecond}
}

// A large file on a long link is read over several SFTP sessions of the one
// connection; what lands is the file, byte for byte.
func TestPullLanes(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	opts := smallLanes(t)
	src := filepath.Join(e.dir, "big.bin")
	const size = 40<<20 + 12345 // not a whole number of pieces
	write(t, src, size)
	e.chown(e.dir)

	c := e.open(opts)
	roots, _ := c.Roots(nil)
	into := t.TempDir()
	res, err := c.Pull(context.Background(), roots, PullSpec{Paths: []string{e.rel(src)}, Dir: into}, &Progress{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != size || res.Sent != size {
		t.Errorf("pulled %d bytes, sent %d, want %d", res.Bytes, res.Sent, size)
	}
	if n := cachedBytes(t, filepath.Join(into, "big.bin")); n != 0 { // dropped once on the disk
		t.Errorf("%d bytes of the staged file are cached, want none", n)
	}
	if got, want := fileSHA(t, filepath.Join(into, "big.bin")), fileSHA(t, src); got != want {
		t.Fatalf("pulled SHA-256 %s, want %s", got, want)
	}
	if n := len(c.sessions()); n != DefaultLanes {
		t.Errorf("%d SFTP sessions used, want %d", n, DefaultLanes)
	}

	// A short link, or Lanes 1, keeps one session.
	short := e.open(Options{})
	if short.useLanes(size) {
		t.Errorf("lanes on loopback (round trip %s)", short.RTT())
	}
	if one := e.open(Options{Lanes: 1, LanesFromRTT: time.Nanosecond}); one.useLanes(size) {
		t.Error("lanes with Lanes 1")
	}
}

// A pull over lanes cut at about half leaves its temporary file cut back to the
// prefix that arrived whole; the retry resumes from there and lands the file whole.
func TestPullLanesResumeAfterConnectionLoss(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	opts := smallLanes(t)
	src := filepath.Join(e.dir, "big.bin")
	const size = 64 << 20
	write(t, src, size)
	e.chown(e.dir)
	into := t.TempDir()

	part, arrived := e.pullCut(opts, src, into, size)
	if part%laneChunk != 0 || part > arrived || part == 0 {
		t.Errorf("temporary file of %d bytes after %d arrived: not cut back to whole pieces", part, arrived)
	}
	e.pullResume(opts, src, into, size, part)
}

// When a piece fails after later ones landed, the temporary file is cut back to the
// pieces before it (the later ones leave a hole behind them), and the retry fetches
// exactly the rest.
func TestPullLanesCutsBackToWholePieces(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	opts := smallLanes(t)
	src := filepath.Join(e.dir, "big.bin")
	const size = 24 << 20
	write(t, src, size)
	e.chown(e.dir)
	into := t.TempDir()

	c := e.open(opts)
	roots, _ := c.Roots(nil)
	prog := &Progress{}
	injected := errors.New("injected failure of piece 5")
	testHookPiece = func(i int64) error {
		if i != 5 {
			return nil
		}
		for prog.Done.Load() < 8*laneChunk { // pieces 0-4 and three after the hole
			time.Sleep(time.Millisecond)
		}
		return injected
	}
	t.Cleanup(func() { testHookPiece = nil })
	if _, err := c.Pull(context.Background(), roots, PullSpec{Paths: []string{e.rel(src)}, Dir: into}, prog); !errors.Is(err, injected) {
		t.Fatalf("pull: %v, want the injected failure", err)
	}
	testHookPiece = nil
	part, err := os.Stat(filepath.Join(into, partName("big.bin")))
	if err != nil {
		t.Fatal(err)
	}
	if part.Size() != 5*laneChunk {
		t.Fatalf("temporary file of %d bytes, want the %d before the failed piece", part.Size(), 5*laneChunk)
	}
	res, err := c.Pull(context.Background(), roots, PullSpec{Paths: []string{e.rel(src)}, Dir: into}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != size-5*laneChunk {
		t.Errorf("retry sent %d bytes, want %d", res.Sent, size-5*laneChunk)
	}
	if got, want := fileSHA(t, filepath.Join(into, "big.bin")), fileSHA(t, src); got != want {
		t.Fatalf("pulled SHA-256 %s, want %s", got, want)
	}
}

// A large push on a long link goes over several sessions, the host hashing the
// acknowledged prefix as it grows; what lands is verified and renamed into place.
func TestPutLanes(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	opts := smallLanes(t)
	fmin, fseg := followMin, followSegment
	followMin = 1 << 20
	t.Cleanup(func() { followMin, followSegment = fmin, fseg })
	local := filepath.Join(t.TempDir(), "big.bin")
	const size = 40<<20 + 12345
	write(t, local, size)
	dest := filepath.Join(e.dir, "dest")
	os.Mkdir(dest, 0o755)
	e.chown(dest)
	u := upload(t, local, dest, "big.bin", "job1")

	c := e.open(opts)
	var sent atomic.Int64
	if err := c.Put(context.Background(), u, &Progress{}, &sent); err != nil {
		t.Fatal(err)
	}
	if got := fileSHA(t, filepath.Join(dest, "big.bin")); got != u.SHA256 || sent.Load() != size {
		t.Fatalf("landed SHA-256 %s (sent %d), want %s (%d)", got, sent.Load(), u.SHA256, size)
	}
	if n := len(c.sessions()); n != DefaultLanes {
		t.Errorf("%d SFTP sessions used, want %d", n, DefaultLanes)
	}
	if _, err := os.Stat(filepath.Join(dest, u.TempName())); !errors.Is(err, os.ErrNotExist) {
		t.Error("temporary file left behind")
	}
}

// A push over lanes cut while a piece was missing behind later ones leaves a hole in
// the host's temporary file; the retry finds the prefix before the hole and sends
// exactly the rest.
func TestPutLanesResumesBeforeAHole(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	opts := smallLanes(t)
	local := filepath.Join(t.TempDir(), "big.bin")
	const size = 24 << 20
	write(t, local, size)
	dest := filepath.Join(e.dir, "dest")
	os.Mkdir(dest, 0o755)
	e.chown(dest)
	u := upload(t, local, dest, "big.bin", "job1")
	part := filepath.Join(dest, u.TempName())

	client := e.dial()
	c, err := Open(client, opts)
	if err != nil {
		t.Fatal(err)
	}
	testHookPiece = func(i int64) error {
		if i != 5 {
			return nil
		}
		for { // pieces 6 to 8 land first (the host's file is on this machine)
			if fi, err := os.Stat(part); err == nil && fi.Size() >= 9*laneChunk {
				break
			}
			time.Sleep(time.Millisecond)
		}
		client.Close()
		return errors.New("cut while piece 5 was missing")
	}
	t.Cleanup(func() { testHookPiece = nil })
	var sent1 atomic.Int64
	if err := c.Put(context.Background(), u, nil, &sent1); !errors.Is(err, ErrConnection) {
		t.Fatalf("cut push: %v, want ErrConnection", err)
	}
	testHookPiece = nil
	fi, err := os.Stat(part)
	if err != nil {
		t.Fatalf("no temporary file to resume: %v", err)
	}

	c2 := e.open(opts)
	var sent2 atomic.Int64
	if err := c2.Put(context.Background(), u, nil, &sent2); err != nil {
		t.Fatal(err)
	}
	t.Logf("temporary file had %d bytes with piece 5 missing; retry sent %d of %d", fi.Size(), sent2.Load(), size)
	if sent2.Load() != size-5*laneChunk {
		t.Errorf("retry sent %d bytes, want the %d from the hole on", sent2.Load(), size-5*laneChunk)
	}
	if got := fileSHA(t, filepath.Join(dest, u.Name)); got != u.SHA256 {
		t.Fatalf("landed SHA-256 %s, want %s", got, u.SHA256)
	}
}
