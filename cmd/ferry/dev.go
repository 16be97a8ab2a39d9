package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/telemetry"
	"github.com/ferrydesk/ferry/services/archiver"
	"github.com/ferrydesk/ferry/services/cleanup"
	"github.com/ferrydesk/ferry/services/connector"
	"github.com/ferrydesk/ferry/services/orchestrator"
	"github.com/ferrydesk/ferry/services/transfer"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
)

// devShutdownTimeout bounds how long `ferry dev` waits for its services to stop; the
// workers' drain timeout is shorter so they hand steps back within it.
const (
	devShutdownTimeout = 20 * time.Second
	devDrainTimeout    = 10 * time.Second
)

type devOptions struct {
	dataDir    string
	natsListen string
	httpAddr   string
	stagingDir string
	secretsDir string
	logLevel   string
	demo       bool
}

func (a *app) devCommand() *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run everything in one process: embedded NATS with JetStream, the orchestrator and every worker",
		Long: `Starts an embedded NATS server with JetStream (its store under --data-dir), provisions
ferry's streams and buckets, and runs the orchestrator and the connector, transfer,
archiver and cleanup workers in this process, with one /metrics and /healthz server.
Other ferry commands reach it with the default --nats-url. Stop it with Ctrl-C.

With --demo it also starts two SSH/SFTP hosts in this process on loopback, an operator
PC (demo-operator) and a customer server (demo-customer), their files under
DATA-DIR/demo/<name>, puts them into the host inventory with their pinned host keys
and their passwords in the secrets directory, and pushes an update from one to the
other: it prints each step with its duration, where the files landed and a table of
the step times. The services then log at warn unless --log-level is given.`,
		Args: cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			if o.demo && !cmd.Flags().Changed("log-level") {
				o.logLevel = "warn"
			}
			return a.runDev(cmd.Context(), o)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", "", "JetStream store, staging and secrets (default $XDG_CACHE_HOME/ferry or the user cache dir)")
	f.StringVar(&o.natsListen, "nats-listen", "127.0.0.1:4222", "address the embedded NATS server listens on (port 0 picks one)")
	f.StringVar(&o.httpAddr, "http", "127.0.0.1:9090", "address of /metrics and /healthz (port 0 picks one)")
	f.StringVar(&o.stagingDir, "staging-dir", "", "staging root (default DATA-DIR/staging)")
	f.StringVar(&o.secretsDir, "secrets-dir", "", "secrets directory (default DATA-DIR/secrets)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&o.demo, "demo", false, "also start two demo SSH/SFTP hosts and push an update from one to the other")
	return cmd
}

func (a *app) defaultDataDir() (string, error) {
	if x := a.getenv("XDG_CACHE_HOME"); x != "" {
		return filepath.Join(x, "ferry"), nil
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no --data-dir and no user cache directory: %w", err)
	}
	return filepath.Join(dir, "ferry"), nil
}

// devService is one service run by `ferry dev`.
type devService struct {
	name contracts.Service
	run  func(ctx context.Context, nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger, ready func()) error
}

func (a *app) runDev(ctx context.Context, o devOptions) error {
	level, err := telemetry.ParseLevel(o.logLevel)
	if err != nil {
		return usageError(fmt.Errorf("--log-level: %w", err))
	}
	host, port, err := listenAddr(o.natsListen)
	if err != nil {
		return usageError(fmt.Errorf("--nats-listen: %w", err))
	}
	if o.dataDir == "" {
		if o.dataDir, err = a.defaultDataDir(); err != nil {
			return err
		}
	}
	if o.stagingDir == "" {
		o.stagingDir = filepath.Join(o.dataDir, "staging")
	}
	if o.secretsDir == "" {
		o.secretsDir = filepath.Join(o.dataDir, "secrets")
	}
	for _, d := range []string{o.dataDir, o.stagingDir, o.secretsDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	// Everything written for people goes through con, so that the live progress lines
	// of the demo stay below the logs on a terminal.
	con := newConsole(a.stdout, isTerminal(a.stdout))
	logs := con.Writer(a.stderr)
	log := telemetry.NewLogger(logs, "dev", level)

	srv, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: filepath.Join(o.dataDir, "jetstream"), Host: host, Port: port})
	if err != nil {
		return err
	}
	defer func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}()
	connect := func(name string) (*nats.Conn, error) {
		return bus.Connect(ctx, bus.Config{Name: "ferry-dev-" + name, InProcess: srv}, log)
	}
	healthNC, err := connect("health")
	if err != nil {
		return err
	}
	defer healthNC.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	telemetry.BuildInfo(reg)

	services := []devService{
		{contracts.ServiceOrchestrator, func(ctx context.Context, nc *nats.Conn, r prometheus.Registerer, l *slog.Logger, ready func()) error {
			return orchestrator.Run(ctx, orchestrator.Config{Provision: true}, orchestrator.Deps{NC: nc, Registerer: r, Logger: l, Ready: ready})
		}},
		{contracts.ServiceConnector, func(ctx context.Context, nc *nats.Conn, r prometheus.Registerer, l *slog.Logger, ready func()) error {
			return connector.Run(ctx, connector.Config{SecretsDir: o.secretsDir, DrainTimeout: devDrainTimeout},
				connector.Deps{NC: nc, Registerer: r, Logger: l, Ready: ready})
		}},
		{contracts.ServiceTransfer, func(ctx context.Context, nc *nats.Conn, r prometheus.Registerer, l *slog.Logger, ready func()) error {
			return transfer.Run(ctx, transfer.Config{StagingDir: o.stagingDir, SecretsDir: o.secretsDir, DrainTimeout: devDrainTimeout},
				transfer.Deps{NC: nc, Registerer: r, Logger: l, Ready: ready})
		}},
		{contracts.ServiceArchiver, func(ctx context.Context, nc *nats.Conn, r prometheus.Registerer, l *slog.Logger, ready func()) error {
			return archiver.Run(ctx, archiver.Config{StagingDir: o.stagingDir, SecretsDir: o.secretsDir, DrainTimeout: devDrainTimeout},
				archiver.Deps{NC: nc, Registerer: r, Logger: l, Ready: ready})
		}},
		{contracts.ServiceCleanup, func(ctx context.Context, nc *nats.Conn, r prometheus.Registerer, l *slog.Logger, ready func()) error {
			return cleanup.Run(ctx, cleanup.Config{StagingDir: o.stagingDir, SecretsDir: o.secretsDir, DrainTimeout: devDrainTimeout},
				cleanup.Deps{NC: nc, Registerer: r, Logger: l, Ready: ready})
		}},
	}

	names := make([]string, len(services))
	for i, s := range services {
		names[i] = string(s.name)
	}
	readiness := telemetry.NewReadiness(names...)
	httpSrv, err := telemetry.Listen(o.httpAddr, reg, readiness.Check(telemetry.NATSHealth(healthNC)), log)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	fail := func(name string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = fmt.Errorf("%s: %w", name, err)
		}
		cancel()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := httpSrv.Serve(ctx); err != nil {
			fail("http", err)
		}
	}()
	for _, s := range services {
		nc, err := connect(string(s.name))
		if err != nil {
			fail(string(s.name), err)
			break
		}
		defer nc.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := telemetry.NewLogger(logs, string(s.name), level)
			// Each service's metrics carry service="<name>", as they do when every
			// service runs in its own process, so the workers' identical metric names
			// do not collide in the one registry.
			r := prometheus.WrapRegistererWith(prometheus.Labels{"service": string(s.name)}, reg)
			err := s.run(ctx, nc, r, l, readiness.Ready(string(s.name)))
			switch {
			case err != nil && !errors.Is(err, context.Canceled):
				l.Error("service failed; stopping ferry dev", "error", err)
				fail(string(s.name), err)
			case ctx.Err() == nil:
				fail(string(s.name), errors.New("stopped on its own"))
			}
		}()
	}

	if ctx.Err() == nil {
		con.Println(fmt.Sprintf("ferry dev is running\n  NATS     %s\n  metrics  http://%s/metrics\n  health   http://%s/healthz\n  data     %s\nStop it with Ctrl-C.",
			srv.ClientURL(), httpSrv.Addr(), httpSrv.Addr(), o.dataDir))
		if a.devReady != nil {
			a.devReady(srv.ClientURL(), httpSrv.Addr())
		}
	}
	if o.demo && ctx.Err() == nil {
		hosts, err := startDemoHosts(o.dataDir, o.secretsDir, telemetry.NewLogger(logs, "demo", level))
		if err != nil {
			con.Println(fmt.Sprintf("demo: %v\nferry dev keeps running without the demo.", err))
		} else {
			defer closeDemoHosts(hosts)
			if nc, err := connect("demo"); err != nil {
				con.Println(fmt.Sprintf("demo: %v", err))
			} else {
				defer nc.Close()
				wg.Add(1)
				go func() {
					defer wg.Done()
					a.runDemo(ctx, nc, con, o, hosts)
				}()
			}
		}
	}

	<-ctx.Done()
	log.Info("shutting down", "timeout", devShutdownTimeout)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(devShutdownTimeout):
		return failure(fmt.Errorf("services did not stop within %s", devShutdownTimeout))
	}
	mu.Lock()
	defer mu.Unlock()
	if firstErr != nil {
		return firstErr
	}
	log.Info("stopped")
	return nil
}

// listenAddr splits host:port for the embedded server, where port 0 means "pick one"
// (the server's own convention for that is -1).
func listenAddr(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if port == 0 {
		port = -1
	}
	return host, port, nil
}
