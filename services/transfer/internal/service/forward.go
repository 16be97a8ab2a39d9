package service

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/logctx"
	"github.com/ferrydesk/ferry/pkg/remote"
	"github.com/ferrydesk/ferry/pkg/worker"
)

// forwarding sends a bundle's archive on to the customer while it is written to
// staging (BundleArgs.Forward; see remote.Forward). It is best effort: whatever goes
// wrong with it is logged and stops it, never the bundle, and the push step then
// resumes or redoes what it left. A nil *forwarding forwards nothing.
type forwarding struct {
	fw    *remote.Forward
	host  string
	dir   string
	start time.Time
	log   *slog.Logger
	err   error // why it stopped early
}

// startForward opens the forward of the archive name to target, or returns nil (and
// logs why) when it cannot: no lease on the host yet, no commands there, a
// destination it may not write.
func (t *Transfer) startForward(ctx context.Context, target *contracts.ForwardTarget, name string) *forwarding {
	log := logctx.From(ctx).With("forward_host", target.Host)
	_, conn, roots, err := t.connect(ctx, target.Host)
	if err != nil {
		log.Info("archive not forwarded while bundled; the push sends it", "err", err)
		return nil
	}
	dir, err := roots.ResolveForWrite(target.DestDir)
	if err == nil {
		err = conn.SFTP().MkdirAll(dir)
	}
	var fw *remote.Forward
	if err == nil {
		fw, err = conn.StartForward(ctx, remote.Upload{Dir: dir, Name: name, Tag: worker.JobID(ctx)})
	}
	if err != nil {
		log.Info("archive not forwarded while bundled; the push sends it", "err", err)
		return nil
	}
	return &forwarding{fw: fw, host: target.Host, dir: dir, start: time.Now(), log: log}
}

// tee returns w, whose writes also go to the forward until it fails.
func (f *forwarding) tee(w io.Writer) io.Writer {
	if f == nil {
		return w
	}
	return &teeWriter{w: w, f: f}
}

type teeWriter struct {
	w io.Writer
	f *forwarding
}

func (t *teeWriter) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	if t.f.err == nil && n > 0 {
		if _, ferr := t.f.fw.Write(p[:n]); ferr != nil {
			t.f.err = ferr
			t.f.log.Warn("forwarding the archive stopped; the push step will send the rest", "err", ferr)
		}
	}
	return n, err
}

// finish completes the forward of the archive m describes (bundled is false when the
// bundle failed: the forward is abandoned) and returns what landed, or nil.
func (t *Transfer) finishForward(ctx context.Context, f *forwarding, m contracts.Manifest, bundled bool) *contracts.Forwarded {
	if f == nil {
		return nil
	}
	if !bundled {
		f.fw.Abort()
		return nil
	}
	landed, err := f.fw.Finish(ctx, m.Artifact.Size, m.Artifact.SHA256)
	files := 1
	if err != nil {
		files = 0
		if f.err == nil { // else the tee has said why already
			f.log.Warn("forwarded archive not complete; the push step will send the rest", "err", err)
		}
	}
	t.metrics.record(DirPush, f.host, f.fw.Sent(), files, time.Since(f.start))
	if err != nil {
		return nil
	}
	f.log.Info("archive forwarded while bundled", "part", f.fw.Part(), "size", landed.Size)
	return &contracts.Forwarded{Host: f.host, Dir: f.dir, Size: landed.Size, SHA256: landed.SHA256, MTime: landed.MTime}
}
