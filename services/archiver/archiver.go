// Package archiver is ferry's archiver service: it builds archives with SHA-256
// manifests from staging and dumps databases through tunnels.
//
// Run wires the service's step operations to the JetStream worker runner; cmd/archiver
// runs it as its own process and cmd/ferry runs it inside `ferry dev`.
package archiver

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/staging"
	"github.com/ferrydesk/ferry/pkg/svcenv"
	"github.com/ferrydesk/ferry/pkg/worker"
	"github.com/ferrydesk/ferry/services/archiver/internal/service"
)

// Config of the archiver service. The zero value takes the defaults.
type Config struct {
	// StagingDir is the staging root shared by the byte-moving services.
	StagingDir string
	// SecretsDir holds credentials by reference (never logged: only its path).
	SecretsDir string
	// Concurrency is how many steps run at once (default: the runner's, 8).
	Concurrency int
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
		slog.Int("concurrency", c.Concurrency),
		slog.Duration("drain_timeout", c.DrainTimeout))
}

// Deps are what the composition root gives the service.
type Deps = worker.Deps

// Run executes archiver step commands until ctx ends, then drains the steps in flight.
func Run(ctx context.Context, cfg Config, deps Deps) error {
	cfg = cfg.withDefaults()
	deps = deps.WithDefaults()
	deps.Logger.Info("archiver starting", "config", cfg)
	st, err := staging.NewDir(cfg.StagingDir)
	if err != nil {
		return fmt.Errorf("archiver: %w", err)
	}
	defer func() { _ = st.Close() }()
	svc := service.New(st, service.Options{SecretsDir: cfg.SecretsDir})
	return worker.Serve(ctx, contracts.ServiceArchiver, service.Ops(svc),
		worker.ServeConfig{Concurrency: cfg.Concurrency, DrainTimeout: cfg.DrainTimeout}, deps)
}
