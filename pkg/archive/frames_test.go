package archive

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// The frames decode as one stream to what was written, and the bytes do not depend on
// how many frames were compressed at once, nor on how the input was split into writes.
func TestFrameWriterRoundTrip(t *testing.T) {
	in := make([]byte, 3*zstdFrame+12345)
	rng := rand.NewChaCha8([32]byte{7})
	rng.Read(in[:len(in)/2]) // half noise, half zeros
	var first []byte
	for _, workers := range []int{1, 2, 4, 0} {
		var out bytes.Buffer
		w, err := newFrameWriter(&out, workers, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(true), zstd.WithWindowSize(zstdWindow))
		must(t, err)
		for rest := in; len(rest) > 0; {
			n := min(len(rest), 1+int(rng.Uint64()%(1<<20)))
			if _, err := w.Write(rest[:n]); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		must(t, w.Close())
		if first == nil {
			first = out.Bytes()
		} else if !bytes.Equal(first, out.Bytes()) {
			t.Fatalf("%d workers: bytes differ from 1 worker's", workers)
		}
		d, err := zstd.NewReader(bytes.NewReader(out.Bytes()))
		must(t, err)
		got, err := io.ReadAll(d)
		d.Close()
		must(t, err)
		if !bytes.Equal(got, in) {
			t.Fatalf("%d workers: decoded %d bytes, not the %d written", workers, len(got), len(in))
		}
	}
}

type failAfter struct{ n int }

var errDiskFull = errors.New("no space left on device")

func (f *failAfter) Write(p []byte) (int, error) {
	if f.n -= len(p); f.n < 0 {
		return 0, errDiskFull
	}
	return len(p), nil
}

// A failed write of the output stops the writer: a later Write or Close returns it.
func TestFrameWriterWriteError(t *testing.T) {
	w, err := newFrameWriter(&failAfter{n: 1}, 2)
	must(t, err)
	chunk := make([]byte, 1<<20)
	var werr error
	for i := 0; i < 64 && werr == nil; i++ {
		_, werr = w.Write(chunk)
	}
	cerr := w.Close()
	if !errors.Is(werr, errDiskFull) && !errors.Is(cerr, errDiskFull) {
		t.Fatalf("write %v, close %v: want the output's error", werr, cerr)
	}
	if werr == nil {
		t.Fatal("64 MiB written after the output failed: Write should stop early")
	}
}
