// Package transfer is ferry's transfer service: it moves bytes over SFTP: copies on a
// remote host, pulls to staging, pushes from staging to a customer server, and delivers
// to the operator.
//
// Run wires the service's step operations to the JetStream worker runner; cmd/transfer
// runs it as its own process and cmd/ferry runs it inside `ferry dev`.
package transfer

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/remote"
	"github.com/ferrydesk/ferry/pkg/session"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/staging"
	"github.com/ferrydesk/ferry/pkg/svcenv"
	"github.com/ferrydesk/ferry/pkg/worker"
	"github.com/ferrydesk/ferry/services/transfer/internal/service"
	"github.com/nats-io/nats.go/jetstream"
)

// Config of the transfer service. The zero value takes the defaults.
type Config struct {
	// StagingDir is the staging root shared by the byte-moving services.
	StagingDir string
	// SecretsDir holds credentials by reference (never logged: only its path).
	SecretsDir string
	// KnownHostsFiles are extra sources of pinned host keys (OpenSSH known_hosts).
	KnownHostsFiles []string
	// Keepalive detects dead peers (default: every 10 s, 2 misses).
	Keepalive sshdial.Keepalive
	// DialTimeout bounds a connection's dial and handshake (default 20 s).
	DialTimeout time.Duration
	// FilesInFlight is how many files a tree transfer moves at once (default 32).
	FilesInFlight int
	// RequestsPerFile is how many SFTP requests one file keeps in flight (default 16).
	RequestsPerFile int
	// MaxPacket is the SFTP payload per request against OpenSSH (default 255 KiB).
	MaxPacket int
	// NoExec never runs commands on hosts (copies and checksums go through SFTP).
	NoExec bool
	// Concurrency is how many steps run at once (default: the runner's, 8).
	Concurrency int
	// InProgressEvery is how often a running step tells JetStream it is alive (default
	// 10 s; keep it well under the consumer's AckWait).
	InProgressEvery time.Duration
	// DrainTimeout bounds how long shutdown waits for steps in flight (default 30 s).
	DrainTimeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.StagingDir == "" {
		c.StagingDir = svcenv.DefaultStagingDir
	}
	if c.SecretsDir == "" {
		c.SecretsDir = svcenv.DefaultSecretsDir
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 30 * time.Second
	}
	return c
}

// LogValue logs the configuration.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("staging_dir", c.StagingDir),
		slog.String("secrets_dir", c.SecretsDir),
		slog.Any("known_hosts", c.KnownHostsFiles),
		slog.Int("files_in_flight", c.FilesInFlight),
		slog.Int("requests_per_file", c.RequestsPerFile),
		slog.Int("max_packet", c.MaxPacket),
		slog.Bool("no_exec", c.NoExec),
		slog.Int("concurrency", c.Concurrency),
		slog.Duration("drain_timeout", c.DrainTimeout))
}

// Deps are what the composition root gives the service.
type Deps = worker.Deps

// Run executes transfer step commands until ctx ends, then drains the steps in flight
// and closes every connection it holds. Connections are dialled under the job's session
// lease and dropped when the lease is revoked.
func Run(ctx context.Context, cfg Config, deps Deps) error {
	cfg = cfg.withDefaults()
	deps = deps.WithDefaults()
	log, reg := deps.Logger, deps.Registerer
	js, err := jetstream.New(deps.NC)
	if err != nil {
		return fmt.Errorf("transfer: %w", err)
	}
	log.Info("transfer starting", "config", cfg)
	stage, err := staging.NewDir(cfg.StagingDir)
	if err != nil {
		return fmt.Errorf("transfer: %w", err)
	}
	defer stage.Close()
	dialer, err := session.OpenDialer(ctx, js, session.DialerConfig{
		SecretsDir: cfg.SecretsDir, KnownHostsFiles: cfg.KnownHostsFiles, Keepalive: cfg.Keepalive, DialTimeout: cfg.DialTimeout,
	}, reg, log)
	if err != nil {
		return err
	}
	defer dialer.Pool.Close()
	go func() {
		if err := dialer.Run(ctx); err != nil {
			log.Error("lease revocations not watched", "error", err)
		}
	}()
	conns := remote.NewConns(remote.Options{
		MaxPacket: cfg.MaxPacket, RequestsPerFile: cfg.RequestsPerFile, FilesInFlight: cfg.FilesInFlight, NoExec: cfg.NoExec,
	})
	svc := service.New(dialer, conns, stage, service.NewMetrics(reg), log)
	return worker.Serve(ctx, contracts.ServiceTransfer, service.Ops(svc),
		worker.ServeConfig{Concurrency: cfg.Concurrency, DrainTimeout: cfg.DrainTimeout, InProgressEvery: cfg.InProgressEvery}, deps)
}
