package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/archive"
	"github.com/ferrydesk/ferry/pkg/logctx"
	"github.com/ferrydesk/ferry/pkg/remote"
	"github.com/ferrydesk/ferry/pkg/worker"
)

// Bundle archives the files Paths select on the host into <staging>/<job>/<Name> with
// its manifest: a pull and an archive in one pass. The first attempt streams the files
// from the host into the archive (remote.Conn.Bundle), never staging them, as `ssh
// host tar c | zstd` would. The files are pulled into the job's staging and archived
// from there instead
//   - when Stage asks to keep them (into that area: an unpacked update pushes the tree),
//   - on a host that runs no GNU tar over exec (an SFTP-only login),
//   - on a retry: a stream cut by a lost connection cannot resume, a pull can, so an
//     interrupted retry goes on from the verified prefix of each file. Such a scratch
//     pull is removed once archived; after a failure it stays for the next attempt
//     (the job's closing step removes its staging in any case).
//
// A bundle and manifest in place that match (hashed again) are returned untouched, so
// a redelivered command does no harm.
func (t *Transfer) Bundle(ctx context.Context, args contracts.BundleArgs) (contracts.ArtifactResult, error) {
	job := worker.JobID(ctx)
	comp, err := checkBundleArgs(args)
	if err != nil {
		return contracts.ArtifactResult{}, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("bundle: %w", err))
	}
	jobDir, err := t.stage.Dir(job)
	if err != nil {
		return contracts.ArtifactResult{}, worker.Permanent(contracts.CodeInvalidCommand, err)
	}
	root, err := os.OpenRoot(jobDir)
	if err != nil {
		return contracts.ArtifactResult{}, fmt.Errorf("staging: %w", err)
	}
	defer func() { _ = root.Close() }()
	log := logctx.From(ctx)
	if m, ok, err := archive.Staged(ctx, root, args.Name, archive.KindArchive, comp); err != nil {
		return contracts.ArtifactResult{}, err
	} else if ok {
		log.Info("bundle exists already and matches its manifest; not written again", "name", args.Name, "sha256", m.Artifact.SHA256)
		return archive.Result(m), nil
	}

	client, conn, roots, err := t.connect(ctx, args.Host)
	if err != nil {
		return contracts.ArtifactResult{}, err
	}
	spec := remote.PullSpec{Paths: args.Paths, Since: time.Duration(args.Since), MaxSize: int64(args.MaxSize), AllowEmpty: args.AllowEmpty, Links: args.Links}
	opts := archive.Options{Name: args.Name, Compression: comp, JobID: job, Created: time.Now()}
	var fw *forwarding
	if args.Forward != nil && args.Stage == "" { // an unpacked update pushes the tree instead
		fw = t.startForward(ctx, args.Forward, args.Name)
	}
	prog := &remote.Progress{}
	end := t.track(ctx, DirPull, args.Host, args.Name, prog)
	var res remote.Result
	var m contracts.Manifest
	switch {
	case args.Stage != "":
		m, res, err = t.stagedBundle(ctx, root, jobDir, args.Stage, true, conn, roots, spec, opts, prog, nil)
	case worker.Attempt(ctx) <= 1 && conn.CanStream(ctx):
		m, res, err = t.streamBundle(ctx, root, conn, roots, spec, opts, prog, fw)
	default:
		m, res, err = t.stagedBundle(ctx, root, jobDir, ".bundle-"+args.Name, false, conn, roots, spec, opts, prog, fw)
	}
	end(res, res.Sent)
	forwarded := t.finishForward(ctx, fw, m, err == nil)
	if err != nil {
		if errors.Is(err, archive.ErrUnsupported) {
			return contracts.ArtifactResult{}, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("bundle: %w", err))
		}
		return contracts.ArtifactResult{}, t.classify(client, err)
	}
	log.Info("bundle written", "name", args.Name, "files", len(m.Files), "bytes", res.Bytes, "size", m.Artifact.Size, "sha256", m.Artifact.SHA256)
	r := archive.Result(m)
	r.Forwarded = forwarded
	return r, nil
}

// streamBundle lists the files and streams them from the host into the archive (and
// on to fw, if set).
func (t *Transfer) streamBundle(ctx context.Context, root *os.Root, conn *remote.Conn, roots *remote.Roots, spec remote.PullSpec, opts archive.Options, prog *remote.Progress, fw *forwarding) (contracts.Manifest, remote.Result, error) {
	var res remote.Result
	l, err := conn.List(ctx, roots, spec)
	if err != nil {
		return contracts.Manifest{}, res, err
	}
	m, err := archive.Stage(root, opts.Name, func(w io.Writer) (contracts.Manifest, error) {
		aw, err := archive.NewWriter(fw.tee(w), l.Bytes, opts)
		if err != nil {
			return contracts.Manifest{}, err
		}
		if res, err = conn.Bundle(ctx, l, aw, prog); err != nil {
			aw.Abort()
			return contracts.Manifest{}, err
		}
		return aw.Close()
	})
	return m, res, err
}

// stagedBundle pulls the files into the area dir of the job's staging (resuming what an
// earlier attempt left there) and archives them from there. Unless keep, dir is removed
// once the archive is made. The archive goes on to fw too, if set.
func (t *Transfer) stagedBundle(ctx context.Context, root *os.Root, jobDir, dir string, keep bool, conn *remote.Conn, roots *remote.Roots, spec remote.PullSpec, opts archive.Options, prog *remote.Progress, fw *forwarding) (contracts.Manifest, remote.Result, error) {
	spec.Dir = filepath.Join(jobDir, dir)
	res, err := conn.Pull(ctx, roots, spec, prog)
	if err != nil {
		return contracts.Manifest{}, res, err
	}
	src, err := root.OpenRoot(dir)
	if err != nil {
		return contracts.Manifest{}, res, fmt.Errorf("staging: %w", err)
	}
	m, err := archive.Stage(root, opts.Name, func(w io.Writer) (contracts.Manifest, error) {
		return archive.Write(ctx, src, fw.tee(w), opts)
	})
	_ = src.Close()
	if err == nil && !keep {
		if rerr := root.RemoveAll(dir); rerr != nil {
			logctx.From(ctx).Warn("scratch pull not removed; the job's closing step will", "dir", dir, "err", rerr)
		}
	}
	return m, res, err
}

func checkBundleArgs(args contracts.BundleArgs) (string, error) {
	if len(args.Paths) == 0 {
		return "", errors.New("no paths to bundle")
	}
	if err := archive.CheckName(args.Name); err != nil {
		return "", err
	}
	if args.Stage != "" && (!filepath.IsLocal(args.Stage) || args.Stage == args.Name || args.Stage == contracts.ManifestName(args.Name)) {
		return "", fmt.Errorf("stage %q must be a relative path inside the staging area, not the archive's", args.Stage)
	}
	return archive.ParseCompression(args.Compression)
}
