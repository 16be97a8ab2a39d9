package archive

import (
	"io"
	"runtime"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
)

// zstdFrame is how much of the tar stream goes into one zstd frame. Frames are
// compressed independently, several at once, and written in order: a 2-core machine
// compresses about twice as fast as with one stream, and the bytes do not depend on
// how many frames were in flight. Decoders read the frames as one stream.
const zstdFrame = 2 << 20

// maxFrameWorkers caps the frames compressed at once (and so the memory: each holds
// its input and its output, at most 2 × zstdFrame).
const maxFrameWorkers = 4

// frameWriter compresses what is written to it into zstd frames of zstdFrame bytes of
// input, up to workers at a time, and writes them to out in order.
type frameWriter struct {
	enc     *zstd.Encoder
	out     io.Writer
	buf     []byte
	pending chan *frame
	written chan error // the writer goroutine's result
	free    chan []byte
	failed  atomic.Pointer[error] // set by the writer goroutine: Write stops early
	err     error
}

type frame struct {
	in    []byte
	out   []byte
	ready chan struct{}
}

// newFrameWriter returns a frameWriter with workers frames in flight (0: one per
// CPU, at most maxFrameWorkers).
func newFrameWriter(out io.Writer, workers int, opts ...zstd.EOption) (*frameWriter, error) {
	if workers <= 0 {
		workers = min(runtime.GOMAXPROCS(0), maxFrameWorkers)
	}
	enc, err := zstd.NewWriter(nil, append(opts, zstd.WithEncoderConcurrency(workers))...)
	if err != nil {
		return nil, err
	}
	w := &frameWriter{
		enc:     enc,
		out:     out,
		pending: make(chan *frame, max(workers-1, 1)), // and the one the writer waits on
		written: make(chan error, 1),
		free:    make(chan []byte, 2*workers+1),
	}
	go w.writeFrames()
	return w, nil
}

// writeFrames writes the frames in the order they were cut, as each is ready. After a
// failed write it keeps draining so that Close returns.
func (w *frameWriter) writeFrames() {
	var err error
	for f := range w.pending {
		<-f.ready
		if err == nil {
			if _, err = w.out.Write(f.out); err != nil {
				w.failed.Store(&err)
			}
		}
		w.recycle(f.in)
		w.recycle(f.out)
	}
	w.written <- err
}

func (w *frameWriter) recycle(b []byte) {
	select {
	case w.free <- b[:0]:
	default:
	}
}

func (w *frameWriter) buffer() []byte {
	select {
	case b := <-w.free:
		return b
	default:
		return make([]byte, 0, zstdFrame)
	}
}

func (w *frameWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if e := w.failed.Load(); e != nil {
		return 0, *e
	}
	n := len(p)
	for len(p) > 0 {
		if w.buf == nil {
			w.buf = w.buffer()
		}
		k := min(len(p), zstdFrame-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == zstdFrame {
			w.cut()
		}
	}
	return n, nil
}

// cut hands the buffered input to a compressing goroutine; it blocks while workers
// frames are in flight.
func (w *frameWriter) cut() {
	f := &frame{in: w.buf, out: w.buffer(), ready: make(chan struct{})}
	w.buf = nil
	w.pending <- f
	go func() {
		f.out = w.enc.EncodeAll(f.in, f.out)
		close(f.ready)
	}()
}

// Close compresses what is buffered, waits for every frame to be written and returns
// the first write error.
func (w *frameWriter) Close() error {
	if w.err != nil {
		return w.err
	}
	if len(w.buf) > 0 {
		w.cut()
	}
	close(w.pending)
	err := <-w.written
	_ = w.enc.Close()
	w.err = io.ErrClosedPipe
	if err != nil {
		w.err = err
	}
	return err
}
