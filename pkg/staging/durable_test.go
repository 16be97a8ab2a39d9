package staging

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// WriteBehind starts the writeback of all but the last chunk written, so that a flush
// at the end has at most a chunk of dirty pages left; Flush leaves none. cachestat(2)
// (Linux 6.5) counts a file's dirty pages.
func TestWriteBehindAndFlush(t *testing.T) {
	dir := diskDir(t)
	dirty := func(f *os.File) int64 { return cachestat(t, f).dirty }
	const size = 5*writeBehindChunk + writeBehindChunk/2
	block := bytes.Repeat([]byte("ferry staging "), 1<<14)
	for _, behind := range []bool{false, true} {
		f, err := os.Create(filepath.Join(dir, "f"))
		if err != nil {
			t.Fatal(err)
		}
		var w io.Writer = f
		if behind {
			w = NewWriteBehind(f, 0)
		}
		for n := 0; n < size; {
			k, err := w.Write(block[:min(len(block), size-n)])
			if err != nil {
				t.Fatal(err)
			}
			n += k
		}
		got := dirty(f)
		switch {
		case behind && got > writeBehindChunk:
			t.Errorf("with write-behind %d bytes still dirty, want at most a chunk (%d)", got, writeBehindChunk)
		case !behind && got < 2*writeBehindChunk:
			t.Skipf("without write-behind only %d bytes dirty: the kernel wrote back on its own, the test shows nothing here", got)
		}
		if err := Flush(dir); err != nil {
			t.Fatal(err)
		}
		if got := dirty(f); got != 0 {
			t.Errorf("after Flush %d bytes dirty", got)
		}
		f.Close()
		os.Remove(f.Name())
	}
}

// Written pages are dropped from the page cache once on the disk: at most
// dropBehindLag plus a chunk stays cached while writing, none after Done; ReadOnce
// leaves none of what it read. Without them the file stays cached (else the test
// shows nothing here and says so).
func TestDropBehind(t *testing.T) {
	dir := diskDir(t)
	const size = 2*dropBehindLag + writeBehindChunk/2
	block := bytes.Repeat([]byte("ferry staging "), 1<<14)
	write := func(w io.Writer, f *os.File) (maxCached int64) {
		for n := 0; n < size; {
			k, err := w.Write(block[:min(len(block), size-n)])
			if err != nil {
				t.Fatal(err)
			}
			n += k
			maxCached = max(maxCached, cachestat(t, f).cached)
		}
		return maxCached
	}

	plain, err := os.Create(filepath.Join(dir, "plain"))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	write(plain, plain)
	if err := plain.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := cachestat(t, plain).cached; got < size/2 {
		t.Skipf("a plain write left only %d of %d bytes cached: the kernel drops pages on its own here, the test shows nothing", got, size)
	}

	f, err := os.Create(filepath.Join(dir, "dropped"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	wb := NewWriteBehind(f, 0)
	if peak := write(wb, f); peak > dropBehindLag+2*writeBehindChunk {
		t.Errorf("while writing %d bytes were cached, want at most %d", peak, dropBehindLag+2*writeBehindChunk)
	}
	if err := wb.Done(); err != nil {
		t.Fatal(err)
	}
	if got := cachestat(t, f).cached; got != 0 {
		t.Errorf("after Done %d bytes cached, want none", got)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}

	// Read back whole (from the disk: nothing of it is cached).
	in, err := os.Open(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	n, err := io.Copy(io.Discard, NewReadOnce(in, 0))
	if err != nil || n != size {
		t.Fatalf("read %d bytes (%v), want %d", n, err, size)
	}
	if got := cachestat(t, in).cached; got != 0 {
		t.Errorf("after ReadOnce %d bytes cached, want none", got)
	}
	// A reader that takes exactly the file's size never sees EOF (the archive and the
	// push read so): the tail past the last whole chunk is dropped all the same.
	exact, err := os.Open(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer exact.Close()
	if _, err := io.CopyN(io.Discard, NewReadOnce(exact, 0), size); err != nil {
		t.Fatal(err)
	}
	if got := cachestat(t, exact).cached; got != 0 {
		t.Errorf("after ReadOnce of exactly %d bytes %d bytes cached, want none", int64(size), got)
	}
	// The plain file, read the same way from an offset, drops what was read only.
	if _, err := plain.Seek(size/2, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, NewReadOnce(plain, size/2)); err != nil {
		t.Fatal(err)
	}
	// (A large folio straddling the middle stays: the kernel drops only whole ones.)
	if got := cachestat(t, plain).cached; got < size/2-(2<<20) || got > size/2+(2<<20) {
		t.Errorf("after reading the second half with ReadOnce %d bytes cached, want the first half (%d)", got, size/2)
	}
}

// diskDir returns a temporary directory on a disk file system (not a tmpfs, whose
// pages are never written back nor dropped).
func diskDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type == unix.TMPFS_MAGIC {
		t.Skip("a tmpfs: its pages are never written to a disk")
	}
	return dir
}

type cacheState struct{ cached, dirty int64 }

// cachestat reads how much of f is in the page cache and dirty (cachestat(2), Linux
// 6.5), skipping the test where the kernel lacks it.
func cachestat(t *testing.T, f *os.File) cacheState {
	t.Helper()
	var st unix.Cachestat_t
	err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &st, 0)
	if errors.Is(err, unix.ENOSYS) {
		t.Skip("no cachestat(2) on this kernel")
	}
	if err != nil {
		t.Fatal(err)
	}
	page := int64(os.Getpagesize())
	return cacheState{cached: int64(st.Cache) * page, dirty: int64(st.Dirty) * page}
}

// A file the kernel cannot wait for (here a pipe: ESPIPE) is written through
// WriteBehind as through the file itself: nothing is dropped, nothing fails.
func TestWriteBehindWhereItCannotWait(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, r)
		got <- n
	}()
	const size = dropBehindLag + 3*writeBehindChunk
	wb := NewWriteBehind(w, 0)
	block := make([]byte, 1<<20)
	for n := 0; n < size; n += len(block) {
		if _, err := wb.Write(block); err != nil {
			t.Fatalf("write at %d: %v", n, err)
		}
	}
	if err := wb.Done(); err != nil {
		t.Fatalf("Done: %v", err)
	}
	w.Close()
	if n := <-got; n != size {
		t.Fatalf("%d bytes came through, want %d", n, size)
	}
}
