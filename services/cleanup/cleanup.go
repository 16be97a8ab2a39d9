// Package cleanup is ferry's cleanup service: it removes the staging areas of jobs and
// their temporary files on hosts, and prunes old backups on hosts (dialled under the
// job's session lease, like transfer). Temporary files on a host out of reach at the
// job's end are recorded and removed by a later sweep, on a connection of its own.
//
// Run wires the service's step operations to the JetStream worker runner; cmd/cleanup
// runs it as its own process and cmd/ferry runs it inside `ferry dev`.
package cleanup

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/remote"
	"github.com/ferrydesk/ferry/pkg/session"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/staging"
	"github.com/ferrydesk/ferry/pkg/svcenv"
	"github.com/ferrydesk/ferry/pkg/worker"
	"github.com/ferrydesk/ferry/services/cleanup/internal/service"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Config of the cleanup service. The zero value takes the defaults.
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
	// SweepEvery is how often orphaned staging is swept, and hosts are tried for the
	// temporary files that jobs left there while out of reach (default 10 min; also at
	// start).
	SweepEvery time.Duration
	// LeftoversWait bounds remove-staging's removal of a job's temporary files on each
	// host (default 30 s); what a host out of reach keeps is left to the sweep.
	LeftoversWait time.Duration
	// UsageEvery is how often the bytes in staging are measured (default 30 s; also at
	// every sweep). The filesystem's size and free space are read at every scrape.
	UsageEvery time.Duration
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
	if c.SweepEvery <= 0 {
		c.SweepEvery = 10 * time.Minute
	}
	if c.UsageEvery <= 0 {
		c.UsageEvery = 30 * time.Second
	}
	return c
}

// LogValue logs the configuration.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("staging_dir", c.StagingDir),
		slog.String("secrets_dir", c.SecretsDir),
		slog.Any("known_hosts", c.KnownHostsFiles),
		slog.Int("concurrency", c.Concurrency),
		slog.Duration("drain_timeout", c.DrainTimeout))
}

// Deps are what the composition root gives the service.
type Deps = worker.Deps

// Run executes cleanup step commands until ctx ends, then drains the steps in flight
// and closes every connection it holds. Hosts are dialled (for prune) under the job's
// session lease and dropped when the lease is revoked.
func Run(ctx context.Context, cfg Config, deps Deps) error {
	cfg = cfg.withDefaults()
	deps = deps.WithDefaults()
	log, reg := deps.Logger, deps.Registerer
	js, err := jetstream.New(deps.NC)
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	log.Info("cleanup starting", "config", cfg)
	st, err := staging.NewDir(cfg.StagingDir)
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	defer func() { _ = st.Close() }()
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
	leftovers, err := bus.WaitKeyValue(ctx, js, contracts.BucketLeftovers)
	if err != nil {
		return err
	}
	store := &service.LeftoverStore{KV: leftovers}
	svc := service.New(st, service.Options{
		Connector:     &service.LeaseConnector{Dialer: dialer, Conns: remote.NewConns(remote.Options{})},
		Pending:       store,
		LeftoversWait: cfg.LeftoversWait,
	})
	jobs, err := bus.WaitKeyValue(ctx, js, contracts.BucketJobs)
	if err != nil {
		return err
	}
	sweeper := &service.Sweeper{Staging: st, Jobs: jobs, Log: log}
	hostSweeper := &service.LeftoverSweeper{Store: store, Hosts: &service.DirectDialer{Dialer: dialer}, Log: log}
	m := newMetrics(reg, st)
	measure := func() {
		if used, err := st.Usage(ctx); err == nil {
			m.stagingBytes.Set(float64(used))
		} else if ctx.Err() == nil {
			log.Warn("measuring staging", "error", err)
		}
	}
	go func() {
		t := time.NewTicker(cfg.SweepEvery)
		defer t.Stop()
		for {
			removed, err := sweeper.Sweep(ctx)
			m.orphans.Add(float64(len(removed)))
			if err != nil && ctx.Err() == nil {
				log.Warn("sweeping orphaned staging", "error", err)
			}
			measure()
			res, err := hostSweeper.Sweep(ctx)
			m.leftoversRemoved.Add(float64(res.Removed))
			m.leftoversDropped.Add(float64(res.Dropped))
			if err == nil { // a sweep cut short did not count what waits
				m.leftoversPending.Set(float64(res.Pending))
			} else if ctx.Err() == nil {
				log.Warn("sweeping jobs' leftovers on hosts", "error", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	// The bytes in staging are walked more often than the sweep runs (a walk stats
	// every staged file: cheap, but not at every scrape).
	go func() {
		t := time.NewTicker(cfg.UsageEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				measure()
			}
		}
	}()
	return worker.Serve(ctx, contracts.ServiceCleanup, service.Ops(svc),
		worker.ServeConfig{Concurrency: cfg.Concurrency, DrainTimeout: cfg.DrainTimeout}, deps)
}

type metrics struct {
	orphans          prometheus.Counter
	stagingBytes     prometheus.Gauge
	leftoversRemoved prometheus.Counter
	leftoversDropped prometheus.Counter
	leftoversPending prometheus.Gauge
}

// newMetrics registers the staging metrics: ferry_staging_bytes (measured at each
// sweep and every UsageEvery), ferry_staging_orphans_removed_total, and the size and
// available bytes of the filesystem holding staging, read at scrape time; and the
// sweep's count of jobs' leftovers on hosts: removed, dropped and pending.
func newMetrics(reg prometheus.Registerer, st *staging.Dir) *metrics {
	m := &metrics{
		orphans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_staging_orphans_removed_total",
			Help: "Staging areas of finished or unknown jobs removed by the sweep.",
		}),
		stagingBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_staging_bytes",
			Help: "Bytes of the files in the staging area (measured every 30 s by default, and at each sweep).",
		}),
	}
	m.leftoversRemoved = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ferry_host_leftovers_removed_total",
		Help: "Jobs' temporary files on hosts out of reach at the job's end, removed later by the sweep (one per job and host).",
	})
	m.leftoversDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ferry_host_leftovers_dropped_total",
		Help: "Records of jobs' temporary files on hosts given up by the sweep (too old, host unknown, names refused); their paths are logged.",
	})
	m.leftoversPending = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ferry_host_leftovers_pending",
		Help: "Records of jobs' temporary files on hosts still out of reach after the last sweep.",
	})
	reg.MustRegister(m.orphans, m.stagingBytes, m.leftoversRemoved, m.leftoversDropped, m.leftoversPending,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ferry_staging_filesystem_size_bytes",
			Help: "Size of the filesystem holding the staging area.",
		}, func() float64 {
			size, _, err := st.Filesystem()
			if err != nil {
				return math.NaN()
			}
			return float64(size)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ferry_staging_filesystem_avail_bytes",
			Help: "Bytes available to ferry on the filesystem holding the staging area.",
		}, func() float64 {
			_, avail, err := st.Filesystem()
			if err != nil {
				return math.NaN()
			}
			return float64(avail)
		}))
	return m
}
