// Package service is the archiver service: one method per step operation, typed
// arguments and results from contracts. Transport (JetStream), logging and metrics wrap
// it from outside (see pkg/worker).
package service

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
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

// maxName bounds an artifact name so that it, its manifest's name and their temporary
// names fit a file name (255 bytes).
const maxName = 200

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

	if res, ok, err := existing(ctx, root, args.Name, archive.KindArchive, comp); err != nil {
		return contracts.ArtifactResult{}, err
	} else if ok {
		log.Info("archive exists already and matches its manifest; not written again", "name", args.Name, "sha256", res.SHA256)
		return res, nil
	}

	src, err := openInput(root, job, args.From)
	if err != nil {
		return contracts.ArtifactResult{}, err
	}
	defer func() { _ = src.Close() }()

	m, err := writeArchive(ctx, root, src, archive.Options{
		Name: args.Name, Compression: comp, JobID: job, Created: a.now(),
		Progress: func(done, total int64) { worker.ReportProgress(ctx, args.Name, done, total) },
	})
	if err != nil {
		if errors.Is(err, archive.ErrUnsupported) {
			return contracts.ArtifactResult{}, worker.Permanent(contracts.CodeInvalidCommand,
				fmt.Errorf("archiver archive: staging area %s of job %s: %w", args.From, job, err))
		}
		return contracts.ArtifactResult{}, err
	}
	log.Info("archive written", "name", args.Name, "files", len(m.Files), "size", m.Artifact.Size, "sha256", m.Artifact.SHA256)
	return result(m), nil
}

// checkArchiveArgs refuses arguments that can never succeed and returns the compression.
func checkArchiveArgs(args contracts.ArchiveArgs) (string, error) {
	comp := args.Compression
	switch comp {
	case "":
		comp = archive.Zstd
	case archive.Zstd, archive.Gzip:
	default:
		return "", fmt.Errorf("compression %q: want zstd or gzip", args.Compression)
	}
	if err := checkName(args.Name); err != nil {
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

// checkName refuses artifact names that are not a plain file name the staging area
// can hold next to its manifest and temporary names.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("no artifact name")
	case len(name) > maxName:
		return fmt.Errorf("artifact name of %d bytes: at most %d", len(name), maxName)
	case strings.Contains(name, "/"):
		return fmt.Errorf("artifact name %q: a file name, not a path", name)
	case strings.HasSuffix(name, contracts.ManifestName("")):
		return fmt.Errorf("artifact name %q: reserved for manifests", name)
	}
	if _, err := archive.SafePath(name); err != nil {
		return fmt.Errorf("artifact name: %w", err)
	}
	return nil
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

// writeArchive writes the archive of src and its manifest into root under temporary
// names, syncs them and renames them into place (archive first, so a manifest in place
// always describes an archive that was complete).
func writeArchive(ctx context.Context, root, src *os.Root, opts archive.Options) (m contracts.Manifest, err error) {
	suffix := ".tmp-" + randomHex()
	tmpArchive, tmpManifest := opts.Name+suffix, contracts.ManifestName(opts.Name)+suffix
	defer func() {
		if err != nil {
			_ = root.Remove(tmpArchive)
			_ = root.Remove(tmpManifest)
		}
	}()
	err = writeFile(root, tmpArchive, func(w io.Writer) error {
		var werr error
		m, werr = archive.Write(ctx, src, w, opts)
		return werr
	})
	if err != nil {
		return m, err
	}
	err = writeFile(root, tmpManifest, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(m)
	})
	if err != nil {
		return m, err
	}
	if err = root.Rename(tmpArchive, opts.Name); err != nil {
		return m, fmt.Errorf("archiver: %w", err)
	}
	if err = root.Rename(tmpManifest, contracts.ManifestName(opts.Name)); err != nil {
		return m, fmt.Errorf("archiver: %w", err)
	}
	return m, syncDir(root)
}

// writeFile creates name in root (it must not exist), writes it through a buffer with
// write, and syncs and closes it.
func writeFile(root *os.Root, name string, write func(io.Writer) error) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return fmt.Errorf("archiver: %w", err)
	}
	// Its writeback starts on the way, so the fsync at the end has little to wait for.
	bw := bufio.NewWriterSize(staging.NewWriteBehind(f, 0), 1<<20)
	if err := write(bw); err != nil {
		_ = f.Close()
		return err
	}
	err = bw.Flush()
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("archiver: writing %s: %w", name, err)
	}
	return nil
}

func syncDir(root *os.Root) error {
	d, err := root.Open(".")
	if err != nil {
		return fmt.Errorf("archiver: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("archiver: syncing the staging directory: %w", err)
	}
	return nil
}

// existing returns the result of an artifact (archive or dump) written before under
// name, when it and its manifest are in place, the manifest is for this artifact, kind
// and compression, and the artifact's size and SHA-256 (hashed again) match it.
// Anything else is false: the artifact is written again (over what is there).
func existing(ctx context.Context, root *os.Root, name, kind, comp string) (contracts.ArtifactResult, bool, error) {
	mf, err := root.Open(contracts.ManifestName(name))
	if err != nil {
		return contracts.ArtifactResult{}, false, nil
	}
	defer func() { _ = mf.Close() }()
	var m contracts.Manifest
	if err := json.NewDecoder(bufio.NewReader(mf)).Decode(&m); err != nil {
		return contracts.ArtifactResult{}, false, nil
	}
	if m.Schema != contracts.SchemaManifest || m.Artifact.Name != name || m.Artifact.Compression != comp || m.Artifact.Kind != kind {
		return contracts.ArtifactResult{}, false, nil
	}
	af, err := root.Open(name)
	if err != nil {
		return contracts.ArtifactResult{}, false, nil
	}
	defer func() { _ = af.Close() }()
	fi, err := af.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != m.Artifact.Size {
		return contracts.ArtifactResult{}, false, nil
	}
	h := sha256.New()
	buf := make([]byte, 256<<10)
	for {
		if err := ctx.Err(); err != nil {
			return contracts.ArtifactResult{}, false, err
		}
		n, err := af.Read(buf)
		h.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return contracts.ArtifactResult{}, false, fmt.Errorf("archiver: reading %s: %w", name, err)
		}
	}
	if hex.EncodeToString(h.Sum(nil)) != m.Artifact.SHA256 {
		logctx.From(ctx).Warn("artifact does not match its manifest; writing it again", "name", name)
		return contracts.ArtifactResult{}, false, nil
	}
	return result(m), true, nil
}

func result(m contracts.Manifest) contracts.ArtifactResult {
	return contracts.ArtifactResult{
		Name:     m.Artifact.Name,
		Manifest: contracts.ManifestName(m.Artifact.Name),
		Size:     m.Artifact.Size,
		SHA256:   m.Artifact.SHA256,
		Files:    len(m.Files),
	}
}

func randomHex() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
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
