// Package service is the transfer service: one method per step operation, typed
// arguments and results from contracts. Transport (JetStream), logging and metrics wrap
// it from outside (see pkg/worker); the SFTP mechanics are pkg/remote.
package service

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/remote"
	"github.com/ferrydesk/ferry/pkg/session"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/staging"
	"github.com/ferrydesk/ferry/pkg/worker"
)

// Service executes the transfer steps. Every method is idempotent: a command may be
// delivered again after the method did its work.
type Service interface {
	// CopyRemote copies files on a remote host, server side where possible.
	CopyRemote(ctx context.Context, args contracts.CopyRemoteArgs) (contracts.DeliveryResult, error)
	// Pull copies files from a host into the job's staging area.
	Pull(ctx context.Context, args contracts.PullArgs) (contracts.DeliveryResult, error)
	// Push sends a staged artifact to a customer server: temporary name, verified, renamed.
	Push(ctx context.Context, args contracts.PushArgs) (contracts.DeliveryResult, error)
	// Deliver sends a staged artifact to the operator's computer.
	Deliver(ctx context.Context, args contracts.DeliverArgs) (contracts.DeliveryResult, error)
	// Bundle streams files from a host into an archive with a manifest in staging.
	Bundle(ctx context.Context, args contracts.BundleArgs) (contracts.ArtifactResult, error)
}

// Ops binds the methods of s to their operations for worker.NewHandler.
func Ops(s Service) []worker.Op {
	return []worker.Op{
		worker.Typed(contracts.OpCopyRemote, s.CopyRemote),
		worker.Typed(contracts.OpPull, s.Pull),
		worker.Typed(contracts.OpPush, s.Push),
		worker.Typed(contracts.OpDeliver, s.Deliver),
		worker.Typed(contracts.OpBundle, s.Bundle),
	}
}

// Transfer is the transfer service of this version.
type Transfer struct {
	dialer  *session.Dialer
	conns   *remote.Conns
	stage   staging.Staging
	metrics *Metrics
	log     *slog.Logger
	// ProgressEvery is how often progress is reported while bytes move (default 500 ms).
	ProgressEvery time.Duration
}

var _ Service = (*Transfer)(nil)

// New returns the transfer service: it dials hosts under the job's lease with dialer,
// keeps one SFTP session per connection in conns, and stages in stage. metrics may be nil.
func New(dialer *session.Dialer, conns *remote.Conns, stage staging.Staging, metrics *Metrics, log *slog.Logger) *Transfer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Transfer{dialer: dialer, conns: conns, stage: stage, metrics: metrics, log: log, ProgressEvery: 500 * time.Millisecond}
}

// Direction labels of the transfer metrics.
const (
	DirCopy    = "copy"
	DirPull    = "pull"
	DirPush    = "push"
	DirDeliver = "deliver"
)

// connect returns the SFTP session of the job's lease on host and the host's roots.
func (t *Transfer) connect(ctx context.Context, host string) (*sshdial.Client, *remote.Conn, *remote.Roots, error) {
	job := worker.JobID(ctx)
	if !contracts.ValidID(host) {
		return nil, nil, nil, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("%q is not a host name", host))
	}
	h, err := t.dialer.Host(ctx, host)
	if err != nil {
		return nil, nil, nil, err
	}
	client, _, err := t.dialer.Client(ctx, job, host)
	if err != nil {
		return nil, nil, nil, err
	}
	conn, err := t.conns.Get(client)
	if err != nil {
		return nil, nil, nil, t.classify(client, err)
	}
	roots, err := conn.Roots(h.Roots)
	if err != nil {
		return nil, nil, nil, t.classify(client, err)
	}
	return client, conn, roots, nil
}

// classify maps pkg/remote's errors to step errors.
func (t *Transfer) classify(client *sshdial.Client, err error) error {
	var se *contracts.StepError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		return err
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case client != nil && client.Err() != nil:
		return worker.Retryable(contracts.CodeUnreachable, fmt.Errorf("%v (%w)", err, client.Err()))
	case errors.Is(err, remote.ErrConnection):
		if client != nil {
			select { // let the client record why the connection ended
			case <-client.Done():
			case <-time.After(200 * time.Millisecond):
			}
			if cerr := client.Err(); cerr != nil {
				return worker.Retryable(contracts.CodeUnreachable, fmt.Errorf("%v (%w)", err, cerr))
			}
		}
		return worker.Retryable(contracts.CodeUnreachable, err)
	case errors.Is(err, remote.ErrNotFound):
		return worker.Permanent(contracts.CodeNotFound, err)
	case errors.Is(err, remote.ErrOutsideRoots), errors.Is(err, remote.ErrInvalidPath):
		return worker.Permanent(contracts.CodeInvalidCommand, err)
	case errors.Is(err, remote.ErrVerify):
		return worker.Permanent(contracts.CodeVerify, err)
	case errors.Is(err, remote.ErrMismatch):
		return worker.Retryable(contracts.CodeVerify, err)
	case errors.Is(err, remote.ErrRemoteWrite):
		// Permanent: a retry would fill the host's disk again; the operator frees space
		// and reruns the job.
		return worker.Permanent(contracts.CodeRemoteWrite, err)
	case errors.Is(err, fs.ErrPermission):
		return worker.Permanent(contracts.CodeInvalidCommand, err)
	}
	return session.Classify(err)
}

// track reports progress of prog every ProgressEvery until the returned func is called,
// which reports the final figure and records the metrics.
func (t *Transfer) track(ctx context.Context, dir, host, file string, prog *remote.Progress) func(res remote.Result, sent int64) {
	start := time.Now()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(t.ProgressEvery)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				worker.ReportProgress(ctx, file, prog.Done.Load(), prog.Total.Load())
			}
		}
	}()
	return func(res remote.Result, sent int64) {
		close(stop)
		<-done
		if total := prog.Total.Load(); total > 0 {
			worker.ReportProgress(ctx, file, prog.Done.Load(), total)
		}
		t.metrics.record(dir, host, sent, res.Files, time.Since(start))
	}
}

// CopyRemote copies Sources into DestDir on the host: cp over exec where the host
// allows commands, else through SFTP. Every path must be within the host's roots.
func (t *Transfer) CopyRemote(ctx context.Context, args contracts.CopyRemoteArgs) (contracts.DeliveryResult, error) {
	if len(args.Sources) == 0 || args.DestDir == "" {
		return contracts.DeliveryResult{}, worker.Permanent(contracts.CodeInvalidCommand, errors.New("copy-remote needs sources and dest_dir"))
	}
	client, conn, roots, err := t.connect(ctx, args.Host)
	if err != nil {
		return contracts.DeliveryResult{}, err
	}
	prog := &remote.Progress{}
	end := t.track(ctx, DirCopy, args.Host, args.DestDir, prog)
	res, err := conn.Copy(ctx, roots, args.Sources, args.DestDir, prog)
	end(res, res.Sent)
	if err != nil {
		return contracts.DeliveryResult{}, t.classify(client, err)
	}
	return contracts.DeliveryResult{Paths: res.Paths, Bytes: res.Bytes}, nil
}

// Pull copies Paths from the host into the job's staging area Into. Its result names
// the staged directory (relative to the job's staging directory).
func (t *Transfer) Pull(ctx context.Context, args contracts.PullArgs) (contracts.DeliveryResult, error) {
	if len(args.Paths) == 0 {
		return contracts.DeliveryResult{}, worker.Permanent(contracts.CodeInvalidCommand, errors.New("pull needs paths"))
	}
	if args.Into == "" || !filepath.IsLocal(args.Into) {
		return contracts.DeliveryResult{}, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("pull: into %q must be a relative path inside the staging area", args.Into))
	}
	jobDir, err := t.stage.Dir(worker.JobID(ctx))
	if err != nil {
		return contracts.DeliveryResult{}, worker.Permanent(contracts.CodeInvalidCommand, err)
	}
	client, conn, roots, err := t.connect(ctx, args.Host)
	if err != nil {
		return contracts.DeliveryResult{}, err
	}
	prog := &remote.Progress{}
	end := t.track(ctx, DirPull, args.Host, args.Into, prog)
	res, err := conn.Pull(ctx, roots, remote.PullSpec{
		Paths: args.Paths, Since: time.Duration(args.Since), MaxSize: int64(args.MaxSize),
		AllowEmpty: args.AllowEmpty, Links: args.Links, Dir: filepath.Join(jobDir, args.Into),
	}, prog)
	end(res, res.Sent)
	if err != nil {
		return contracts.DeliveryResult{}, t.classify(client, err)
	}
	t.log.Debug("pulled", "files", res.Files, "bytes", res.Bytes, "sent", res.Sent)
	return contracts.DeliveryResult{Paths: []string{filepath.ToSlash(args.Into)}, Bytes: res.Bytes}, nil
}

// staged reads the job's staged artifact and its manifest.
func (t *Transfer) staged(ctx context.Context, artifact string) (jobDir string, m contracts.Manifest, raw []byte, err error) {
	if artifact == "" || !filepath.IsLocal(artifact) || strings.ContainsAny(artifact, `/\`) {
		return "", m, nil, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("artifact %q must be a file name in the staging area", artifact))
	}
	jobDir, err = t.stage.Dir(worker.JobID(ctx))
	if err != nil {
		return "", m, nil, worker.Permanent(contracts.CodeInvalidCommand, err)
	}
	raw, err = os.ReadFile(filepath.Join(jobDir, contracts.ManifestName(artifact)))
	if errors.Is(err, fs.ErrNotExist) {
		return "", m, nil, worker.Permanent(contracts.CodeNotFound, fmt.Errorf("the manifest of %s is not staged (%s): did the archive step run?", artifact, contracts.ManifestName(artifact)))
	}
	if err != nil {
		return "", m, nil, err
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", m, nil, worker.Permanent(contracts.CodeVerify, fmt.Errorf("manifest of %s: %v", artifact, err))
	}
	if m.Artifact.Name != artifact {
		return "", m, nil, worker.Permanent(contracts.CodeVerify, fmt.Errorf("manifest %s describes %q, not %q", contracts.ManifestName(artifact), m.Artifact.Name, artifact))
	}
	return jobDir, m, raw, nil
}

// deliverArtifact lands the artifact and its manifest in dir as name and
// name.manifest.json.
// landed, if set, is the artifact already there under its temporary name (a forward).
func (t *Transfer) deliverArtifact(ctx context.Context, conn *remote.Conn, jobDir, dir, name string, m contracts.Manifest, raw []byte, landed *remote.Landed, prog *remote.Progress, sent *atomic.Int64) ([]string, error) {
	job := worker.JobID(ctx)
	sum := sha256.Sum256(raw)
	prog.Total.Store(m.Artifact.Size + int64(len(raw)))
	uploads := []remote.Upload{
		{Local: filepath.Join(jobDir, m.Artifact.Name), Dir: dir, Name: name, Size: m.Artifact.Size, SHA256: m.Artifact.SHA256, Tag: job, Landed: landed},
		{Local: filepath.Join(jobDir, contracts.ManifestName(m.Artifact.Name)), Dir: dir, Name: contracts.ManifestName(name), Size: int64(len(raw)), SHA256: hex.EncodeToString(sum[:]), Tag: job},
	}
	var paths []string
	for _, u := range uploads {
		if err := conn.Put(ctx, u, prog, sent); err != nil {
			return paths, err
		}
		paths = append(paths, path.Join(u.Dir, u.Name))
	}
	return paths, nil
}

// Push lands the staged artifact and its manifest in DestDir on the host, or with
// Unpack the staged tree Tree, each file verified against the manifest.
func (t *Transfer) Push(ctx context.Context, args contracts.PushArgs) (contracts.DeliveryResult, error) {
	if args.DestDir == "" {
		return contracts.DeliveryResult{}, worker.Permanent(contracts.CodeInvalidCommand, errors.New("push needs dest_dir"))
	}
	if args.Unpack && (args.Tree == "" || !filepath.IsLocal(args.Tree)) {
		return contracts.DeliveryResult{}, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("push with unpack: tree %q must be a relative path inside the staging area", args.Tree))
	}
	jobDir, m, raw, err := t.staged(ctx, args.Artifact)
	if err != nil {
		return contracts.DeliveryResult{}, err
	}
	client, conn, roots, err := t.connect(ctx, args.Host)
	if err != nil {
		return contracts.DeliveryResult{}, err
	}
	dir, err := roots.ResolveForWrite(args.DestDir)
	if err == nil {
		if err = conn.SFTP().MkdirAll(dir); err != nil {
			err = fmt.Errorf("%w: creating %s: %v", remote.ErrRemoteWrite, dir, err)
		}
	}
	if err != nil {
		return contracts.DeliveryResult{}, t.classify(client, err)
	}
	prog := &remote.Progress{}
	var sent atomic.Int64
	end := t.track(ctx, DirPush, args.Host, args.Artifact, prog)
	var res contracts.DeliveryResult
	if args.Unpack {
		err = conn.PutTree(ctx, filepath.Join(jobDir, args.Tree), dir, worker.JobID(ctx), m, prog, &sent)
		tops := map[string]bool{}
		for _, f := range m.Files {
			top, _, _ := strings.Cut(f.Path, "/")
			if !tops[top] {
				tops[top] = true
				res.Paths = append(res.Paths, path.Join(dir, top))
			}
			res.Bytes += f.Size
		}
		files := len(m.Files)
		if err != nil {
			files = 0
		}
		end(remote.Result{Files: files}, sent.Load())
	} else {
		var landed *remote.Landed
		if f := args.Forwarded; f != nil && f.Host == args.Host && f.Dir == dir {
			landed = &remote.Landed{Size: f.Size, SHA256: f.SHA256, MTime: f.MTime}
		}
		res.Paths, err = t.deliverArtifact(ctx, conn, jobDir, dir, args.Artifact, m, raw, landed, prog, &sent)
		res.Bytes = m.Artifact.Size
		end(remote.Result{Files: len(res.Paths)}, sent.Load())
	}
	if err != nil {
		return contracts.DeliveryResult{}, t.classify(client, err)
	}
	return res, nil
}

// Deliver lands the staged artifact in DestDir (created if needed) on the operator's
// computer as Name, with its manifest as Name.manifest.json.
func (t *Transfer) Deliver(ctx context.Context, args contracts.DeliverArgs) (contracts.DeliveryResult, error) {
	if args.DestDir == "" {
		return contracts.DeliveryResult{}, worker.Permanent(contracts.CodeInvalidCommand, errors.New("deliver needs dest_dir"))
	}
	name := args.Name
	if name == "" {
		name = args.Artifact
	}
	if !filepath.IsLocal(name) || strings.ContainsAny(name, `/\`) || strings.HasPrefix(name, ".") {
		return contracts.DeliveryResult{}, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("deliver: name %q must be a plain file name", name))
	}
	jobDir, m, raw, err := t.staged(ctx, args.Artifact)
	if err != nil {
		return contracts.DeliveryResult{}, err
	}
	client, conn, roots, err := t.connect(ctx, args.Host)
	if err != nil {
		return contracts.DeliveryResult{}, err
	}
	dir, err := roots.ResolveForWrite(args.DestDir)
	if err == nil {
		if err = conn.SFTP().MkdirAll(dir); err != nil {
			err = fmt.Errorf("%w: creating %s: %v", remote.ErrRemoteWrite, dir, err)
		}
	}
	if err != nil {
		return contracts.DeliveryResult{}, t.classify(client, err)
	}
	prog := &remote.Progress{}
	var sent atomic.Int64
	end := t.track(ctx, DirDeliver, args.Host, name, prog)
	paths, err := t.deliverArtifact(ctx, conn, jobDir, dir, name, m, raw, nil, prog, &sent)
	end(remote.Result{Files: len(paths)}, sent.Load())
	if err != nil {
		return contracts.DeliveryResult{}, t.classify(client, err)
	}
	return contracts.DeliveryResult{Paths: paths, Bytes: m.Artifact.Size}, nil
}
