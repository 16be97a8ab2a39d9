// Package connector is ferry's connector service: it opens and verifies SSH sessions to
// inventory hosts, records session leases, forwards tunnels, and closes everything a job
// opened.
//
// Run wires the service's step operations to the JetStream worker runner; cmd/connector
// runs it as its own process and cmd/ferry runs it inside `ferry dev`.
package connector

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/session"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/svcenv"
	"github.com/ferrydesk/ferry/pkg/worker"
	"github.com/ferrydesk/ferry/services/connector/internal/service"
	"github.com/nats-io/nats.go/jetstream"
)

// Config of the connector service. The zero value takes the defaults.
type Config struct {
	// SecretsDir holds credentials by reference (never logged: only its path).
	SecretsDir string
	// KnownHostsFiles are extra sources of pinned host keys (OpenSSH known_hosts).
	KnownHostsFiles []string
	// LeaseTTL bounds a session lease whose job never closes it (default 12 h).
	LeaseTTL time.Duration
	// TunnelListen is the interface tunnels listen on (default 127.0.0.1).
	TunnelListen string
	// TunnelAdvertise is the host name the archiver reaches tunnels by (default:
	// TunnelListen, or this host's name when listening on every interface).
	TunnelAdvertise string
	// Keepalive detects dead peers (default: every 10 s, 2 misses).
	Keepalive sshdial.Keepalive
	// DialTimeout bounds a connection's dial and handshake (default 20 s).
	DialTimeout time.Duration
	// SweepEvery is how often expired leases are revoked (default 30 s).
	SweepEvery time.Duration
	// Concurrency is how many steps run at once (default: the runner's, 8).
	Concurrency int
	// DrainTimeout bounds how long shutdown waits for steps in flight (default 30 s).
	DrainTimeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.SecretsDir == "" {
		c.SecretsDir = svcenv.DefaultSecretsDir
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 12 * time.Hour
	}
	if c.TunnelListen == "" {
		c.TunnelListen = "127.0.0.1"
	}
	if c.TunnelAdvertise == "" {
		c.TunnelAdvertise = c.TunnelListen
		if c.TunnelListen == "0.0.0.0" || c.TunnelListen == "::" {
			c.TunnelAdvertise, _ = os.Hostname()
		}
	}
	if c.SweepEvery <= 0 {
		c.SweepEvery = 30 * time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 30 * time.Second
	}
	return c
}

// LogValue logs the configuration.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("secrets_dir", c.SecretsDir),
		slog.Any("known_hosts", c.KnownHostsFiles),
		slog.Duration("lease_ttl", c.LeaseTTL),
		slog.String("tunnel_listen", c.TunnelListen),
		slog.String("tunnel_advertise", c.TunnelAdvertise),
		slog.Int("concurrency", c.Concurrency),
		slog.Duration("drain_timeout", c.DrainTimeout))
}

// Deps are what the composition root gives the service.
type Deps = worker.Deps

// Run executes connector step commands until ctx ends, then drains the steps in flight
// and closes every connection and tunnel it holds.
func Run(ctx context.Context, cfg Config, deps Deps) error {
	cfg = cfg.withDefaults()
	deps = deps.WithDefaults()
	log, reg := deps.Logger, deps.Registerer
	js, err := jetstream.New(deps.NC)
	if err != nil {
		return fmt.Errorf("connector: %w", err)
	}
	log.Info("connector starting", "config", cfg)
	dialer, err := session.OpenDialer(ctx, js, session.DialerConfig{
		SecretsDir: cfg.SecretsDir, KnownHostsFiles: cfg.KnownHostsFiles, Keepalive: cfg.Keepalive, DialTimeout: cfg.DialTimeout,
	}, reg, log)
	if err != nil {
		return err
	}
	defer dialer.Pool.Close()
	host, _ := os.Hostname()
	// Tunnels live as long as the service, and close before the pool does.
	life, endLife := context.WithCancel(context.WithoutCancel(ctx))
	defer endLife()
	conn := service.New(life, service.Config{
		LeaseTTL: cfg.LeaseTTL, TunnelListen: cfg.TunnelListen, TunnelAdvertise: cfg.TunnelAdvertise,
		Instance: fmt.Sprintf("%s/%d", host, os.Getpid()),
	}, dialer, log)
	// Closed here, not only by endLife: a tunnel's own goroutine would close it some
	// time after Run returned.
	defer conn.CloseTunnels()

	conn.RestoreTunnels(ctx)
	go func() {
		if err := dialer.Leases.WatchRevocations(ctx, conn.Revoked); err != nil {
			log.Error("lease revocations not watched", "error", err)
		}
	}()
	go func() {
		t := time.NewTicker(cfg.SweepEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				conn.Sweep(ctx)
			}
		}
	}()

	return worker.Serve(ctx, contracts.ServiceConnector, service.Ops(conn),
		worker.ServeConfig{Concurrency: cfg.Concurrency, DrainTimeout: cfg.DrainTimeout}, deps)
}
