package remote

import (
	"os"

	"golang.org/x/sys/unix"
)

// A pull step reports success only when what it staged is on stable storage: the next
// step (the archive) may run after a power loss of the helpdesk, and would otherwise
// read files the crash cut short. One syncfs at the end covers every file, however
// many; on the way, large files start their writeback every writeBehindChunk bytes, so
// that the final flush finds little left to wait for.

// writeBehindChunk is how much of a staged file is written before its writeback is
// started.
const writeBehindChunk = 8 << 20

// writeBehind writes to a staged file in order and queues each writeBehindChunk
// written for the disk (sync_file_range SYNC_FILE_RANGE_WRITE: it starts the I/O and
// returns).
type writeBehind struct {
	f      *os.File
	queued int64 // offset up to which writeback was started
	pos    int64
}

func newWriteBehind(f *os.File, offset int64) *writeBehind {
	return &writeBehind{f: f, queued: offset, pos: offset}
}

func (w *writeBehind) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.pos += int64(n)
	if w.pos-w.queued >= writeBehindChunk {
		// Only a hint: the flush at the end of the pull is what counts.
		_ = unix.SyncFileRange(int(w.f.Fd()), w.queued, w.pos-w.queued, unix.SYNC_FILE_RANGE_WRITE)
		w.queued = w.pos
	}
	return n, err
}

// flushStaging writes everything staged in dir's file system to stable storage
// (syncfs), files and directory entries alike.
func flushStaging(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return &os.PathError{Op: "syncfs", Path: dir, Err: err}
	}
	return nil
}
