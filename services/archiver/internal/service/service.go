// Package service is the archiver service: one method per step operation, typed
// arguments and results from contracts. Transport (JetStream), logging and metrics wrap
// it from outside (see pkg/worker).
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/archive"
	"github.com/ferrydesk/ferry/pkg/dbdump"
	"github.com/ferrydesk/ferry/pkg/logctx"
	"github.com/ferrydesk/ferry/pkg/staging"
	"github.com/ferrydesk/ferry/pkg/worker"
)

// Service executes the archiver steps. Every method is idempotent: a command may be
// delivered again after the method did its work.
type Service interface {
	// Archive archives a staging area (tar + zstd or gzip) with a manifest.
	Archive(ctx context.Context, args contracts.ArchiveArgs) (contracts.ArtifactResult, error)
	// Dump dumps a database through a tunnel into staging.
	Dump(ctx context.Context, args contracts.DumpArgs) (contracts.ArtifactResult, error)
}

// Ops binds the methods of s to their operations for worker.NewHandler.
func Ops(s Service) []worker.Op {
	return []worker.Op{
		worker.Typed(contracts.OpArchive, s.Archive),
		worker.Typed(contracts.OpDump, s.Dump),
	}
}

// Options configure the archiver service. The zero value takes the defaults.
type Options struct {
	// SecretsDir holds the database credentials by reference (<SecretsDir>/<ref>/password).
	SecretsDir string
	// Dumper runs the database dump tools (default: found in PATH).
	Dumper *dbdump.Dumper
}

// New returns the archiver service working on the staging area st.
func New(st staging.Staging, opts Options) Service {
	if opts.Dumper == nil {
		opts.Dumper = &dbdump.Dumper{}
	}
	return &archiver{staging: st, now: time.Now, secretsDir: opts.SecretsDir, dumper: opts.Dumper}
}

type archiver struct {
	staging    staging.Staging
	now        func() time.Time
	secretsDir string
	dumper     *dbdump.Dumper
}

// Archive archives <staging>/<job>/<From>/ into <staging>/<job>/<Name> with its manifest
// <Name>.manifest.json (the job id comes from the command, through worker.JobID).
//
// Both files are written under temporary names, synced and renamed into place, archive
// first. When both exist already and the archive's size and SHA-256 (hashed again) match
// its manifest, the step returns them untouched: a redelivered command does no harm.
//
// Bad arguments and a tree that cannot be archived (a symbolic link in it) fail for
// good with invalid_command, a missing input directory with not_found; I/O errors are
// retryable.
func (a *archiver) Archive(ctx context.Context, args contracts.ArchiveArgs) (contracts.ArtifactResult, error) {
	job := worker.JobID(ctx)
	if !contracts.ValidID(job) {
		return contracts.ArtifactResult{}, worker.Permanent(contracts.CodeInvalidCommand,
			fmt.Errorf("archiver archive: %q is not a job id", job))
	}
	return a.archive(ctx, job, args)
}

func (a *archiver) archive(ctx context.Context, job string, args contracts.ArchiveArgs) (contracts.ArtifactResult, error) {
	comp, err := checkArchiveArgs(args)
	if err != nil {
		return contracts.ArtifactResult{}, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("archiver archive: %w", err))
	}
	root, err := a.jobRoot(job)
	if err != nil {
		return contracts.ArtifactResult{}, err
	}
	defer func() { _ = root.Close() }()
	log := logctx.From(ctx)

	if m, ok, err := archive.Staged(ctx, root, args.Name, archive.KindArchive, comp); err != nil {
		return contracts.ArtifactResult{}, err
	} else if ok {
		log.Info("archive exists already and matches its manifest; not written again", "name", args.Name, "sha256", m.Artifact.SHA256)
		return archive.Result(m), nil
	}

	src, err := openInput(root, job, args.From)
	if err != nil {
		return contracts.ArtifactResult{}, err
	}
	defer func() { _ = src.Close() }()

	m, err := archive.Stage(root, args.Name, func(w io.Writer) (contracts.Manifest, error) {
		return archive.Write(ctx, src, w, archive.Options{
			Name: args.Name, Compression: comp, JobID: job, Created: a.now(),
			Progress: func(done, total int64) { worker.ReportProgress(ctx, args.Name, done, total) },
		})
	})
	if err != nil {
		if errors.Is(err, archive.ErrUnsupported) {
			return contracts.ArtifactResult{}, worker.Permanent(contracts.CodeInvalidCommand,
				fmt.Errorf("archiver archive: staging area %s of job %s: %w", args.From, job, err))
		}
		return contracts.ArtifactResult{}, err
	}
	log.Info("archive written", "name", args.Name, "files", len(m.Files), "size", m.Artifact.Size, "sha256", m.Artifact.SHA256)
	return archive.Result(m), nil
}

// checkArchiveArgs refuses arguments that can never succeed and returns the compression.
func checkArchiveArgs(args contracts.ArchiveArgs) (string, error) {
	comp, err := archive.ParseCompression(args.Compression)
	if err != nil {
		return "", err
	}
	if err := archive.CheckName(args.Name); err != nil {
		return "", err
	}
	if args.From == "" {
		return "", errors.New("no staging area to archive (from)")
	}
	if _, err := archive.SafePath(args.From); err != nil {
		return "", fmt.Errorf("staging area (from): %w", err)
	}
	if top, _, _ := strings.Cut(args.From, "/"); top == args.Name || top == contracts.ManifestName(args.Name) {
		return "", fmt.Errorf("artifact %q would be written into the staging area %q it archives", args.Name, args.From)
	}
	return comp, nil
}

// openInput opens the staging area from below the job's directory. Every component
// must be a real directory: a missing one means nothing was staged (not_found), a
// symbolic link is refused (invalid_command).
func openInput(root *os.Root, job, from string) (*os.Root, error) {
	p := ""
	for c := range strings.SplitSeq(from, "/") {
		p = path.Join(p, c)
		fi, err := root.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, worker.Permanent(contracts.CodeNotFound, fmt.Errorf("nothing staged in %s/%s: %s does not exist", job, from, p))
		case err != nil:
			return nil, fmt.Errorf("archiver: %w", err)
		case fi.Mode()&fs.ModeSymlink != 0:
			return nil, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("archiver archive: %s/%s is a symbolic link", job, p))
		case !fi.IsDir():
			return nil, worker.Permanent(contracts.CodeNotFound, fmt.Errorf("nothing staged in %s/%s: %s is not a directory", job, from, p))
		}
	}
	src, err := root.OpenRoot(from)
	if err != nil {
		return nil, fmt.Errorf("archiver: %w", err)
	}
	return src, nil
}

// jobRoot opens the job's staging directory, creating it if needed; every path a step
// touches is resolved inside it.
func (a *archiver) jobRoot(job string) (*os.Root, error) {
	dir, err := a.staging.Dir(job)
	if err != nil {
		if errors.Is(err, staging.ErrInvalidJob) {
			return nil, worker.Permanent(contracts.CodeInvalidCommand, err)
		}
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("archiver: %w", err)
	}
	return root, nil
}
