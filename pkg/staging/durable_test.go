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
	dir := t.TempDir()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type == unix.TMPFS_MAGIC {
		t.Skip("a tmpfs: its pages are never written to a disk")
	}
	dirty := func(f *os.File) int64 {
		t.Helper()
		var st unix.Cachestat_t
		err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &st, 0)
		if errors.Is(err, unix.ENOSYS) {
			t.Skip("no cachestat(2) on this kernel")
		}
		if err != nil {
			t.Fatal(err)
		}
		return int64(st.Dirty) * int64(os.Getpagesize())
	}
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
