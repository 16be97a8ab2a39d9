// Package svcenv is the shared composition root of ferry's service binaries: it reads
// the FERRY_* environment into one typed Env, and Run gives a service the common life
// of a process: JSON logs, a NATS connection, /metrics and /healthz, and a shutdown
// bounded by a timeout.
//
// A service's main stays a few lines: Load the Env, build the service's Config from it,
// and call Run with the service's own Run function.
package svcenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/telemetry"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Defaults of Env.
const (
	DefaultHTTPAddr        = ":9090"
	DefaultStagingDir      = "/var/lib/ferry/staging"
	DefaultSecretsDir      = "/run/secrets/ferry"
	DefaultShutdownTimeout = 45 * time.Second
)

// Env is what a service binary reads from its environment. Variables:
//
//	FERRY_NATS_URL, FERRY_NATS_USER, FERRY_NATS_PASSWORD, FERRY_NATS_CREDS,
//	FERRY_NATS_CA, FERRY_NATS_CERT, FERRY_NATS_KEY   how to reach NATS
//	FERRY_NATS_PASSWORD_FILE  file holding the NATS password (a mounted secret),
//	                          instead of FERRY_NATS_PASSWORD
//	FERRY_HTTP_ADDR          /metrics and /healthz (default :9090)
//	FERRY_LOG_LEVEL          debug, info, warn, error (default info)
//	FERRY_STAGING_DIR        staging root (default /var/lib/ferry/staging)
//	FERRY_SECRETS_DIR        secrets directory (default /run/secrets/ferry)
//	FERRY_CONCURRENCY        steps run at once by a worker (default: the runner's)
//	FERRY_SHUTDOWN_TIMEOUT   bound of a graceful shutdown (default 45s)
type Env struct {
	NATS            bus.Config
	HTTPAddr        string
	LogLevel        slog.Level
	StagingDir      string
	SecretsDir      string
	Concurrency     int
	ShutdownTimeout time.Duration
}

// LogValue keeps the NATS secrets out of logs (see bus.Config.LogValue).
func (e Env) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Any("nats", e.NATS), slog.String("http_addr", e.HTTPAddr),
		slog.String("log_level", e.LogLevel.String()), slog.String("staging_dir", e.StagingDir),
		slog.String("secrets_dir", e.SecretsDir), slog.Int("concurrency", e.Concurrency),
		slog.Duration("shutdown_timeout", e.ShutdownTimeout))
}

// Load reads the Env through getenv (os.Getenv in a main). Every bad variable is named
// in the error.
func Load(getenv func(string) string) (Env, error) {
	or := func(name, def string) string {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			return v
		}
		return def
	}
	e := Env{
		NATS: bus.Config{
			URL:      or("FERRY_NATS_URL", nats.DefaultURL),
			User:     getenv("FERRY_NATS_USER"),
			Password: getenv("FERRY_NATS_PASSWORD"),
			Creds:    getenv("FERRY_NATS_CREDS"),
			CAFile:   getenv("FERRY_NATS_CA"),
			CertFile: getenv("FERRY_NATS_CERT"),
			KeyFile:  getenv("FERRY_NATS_KEY"),
		},
		HTTPAddr:        or("FERRY_HTTP_ADDR", DefaultHTTPAddr),
		StagingDir:      or("FERRY_STAGING_DIR", DefaultStagingDir),
		SecretsDir:      or("FERRY_SECRETS_DIR", DefaultSecretsDir),
		ShutdownTimeout: DefaultShutdownTimeout,
	}
	var errs []error
	var err error
	if e.LogLevel, err = telemetry.ParseLevel(getenv("FERRY_LOG_LEVEL")); err != nil {
		errs = append(errs, fmt.Errorf("FERRY_LOG_LEVEL: %w", err))
	}
	if v := or("FERRY_CONCURRENCY", ""); v != "" {
		if e.Concurrency, err = strconv.Atoi(v); err != nil || e.Concurrency < 1 {
			errs = append(errs, fmt.Errorf("FERRY_CONCURRENCY: must be a positive number, not %q", v))
		}
	}
	if v := or("FERRY_SHUTDOWN_TIMEOUT", ""); v != "" {
		if e.ShutdownTimeout, err = time.ParseDuration(v); err != nil || e.ShutdownTimeout <= 0 {
			errs = append(errs, fmt.Errorf("FERRY_SHUTDOWN_TIMEOUT: must be a positive duration such as 45s, not %q", v))
		}
	}
	if f := strings.TrimSpace(getenv("FERRY_NATS_PASSWORD_FILE")); f != "" {
		if e.NATS.Password != "" {
			errs = append(errs, errors.New("FERRY_NATS_PASSWORD and FERRY_NATS_PASSWORD_FILE: set one, not both"))
		} else if e.NATS.Password, err = ReadSecretFile(f); err != nil {
			errs = append(errs, fmt.Errorf("FERRY_NATS_PASSWORD_FILE: %w", err))
		}
	}
	if (e.NATS.CertFile == "") != (e.NATS.KeyFile == "") {
		errs = append(errs, errors.New("FERRY_NATS_CERT and FERRY_NATS_KEY: set both or neither"))
	}
	return e, errors.Join(errs...)
}

// ReadSecretFile reads a one-line secret; one trailing newline (LF or CRLF) is not
// part of it. The error names the file, never its content.
func ReadSecretFile(name string) (string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return "", err
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if s == "" {
		return "", fmt.Errorf("%s is empty", name)
	}
	return s, nil
}

// Deps is what Run hands to a service: its own NATS connection, a Registerer that
// labels every metric with service="<name>", and a logger that names the service.
type Deps struct {
	NC         *nats.Conn
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Ready is called by the service once it takes work; /healthz fails with
	// "starting" until then.
	Ready func()
}

// logOutput is where Run's logs go (tests replace it).
var logOutput io.Writer = os.Stderr

// Run connects to NATS, serves /metrics and /healthz on env.HTTPAddr, and runs start
// until ctx ends or start returns. Then it stops the HTTP server and waits for start to
// return within env.ShutdownTimeout. It returns start's error, if any.
func Run(ctx context.Context, service contracts.Service, env Env, start func(context.Context, Deps) error) error {
	name := string(service)
	log := telemetry.NewLogger(logOutput, name, env.LogLevel)
	log.Info("starting", "version", telemetry.BuildVersion(), "env", env)
	if env.NATS.Name == "" {
		env.NATS.Name = "ferry-" + name
	}
	if env.ShutdownTimeout <= 0 {
		env.ShutdownTimeout = DefaultShutdownTimeout
	}
	nc, err := bus.Connect(ctx, env.NATS, log)
	if err != nil {
		return err
	}
	defer nc.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	telemetry.BuildInfo(reg)
	readiness := telemetry.NewReadiness(name)
	srv, err := telemetry.Listen(env.HTTPAddr, reg, readiness.Check(telemetry.NATSHealth(nc)), log)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	svcDone := make(chan error, 1)
	httpDone := make(chan error, 1)
	go func() {
		svcDone <- start(ctx, Deps{
			NC:         nc,
			Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"service": name}, reg),
			Logger:     log,
			Ready: sync.OnceFunc(func() {
				readiness.Ready(name)()
				log.Info("ready")
			}),
		})
		cancel()
	}()
	go func() {
		err := srv.Serve(ctx)
		if err != nil {
			log.Error("telemetry server failed; stopping", "error", err)
		}
		httpDone <- err
		cancel()
	}()

	<-ctx.Done()
	log.Info("shutting down", "timeout", env.ShutdownTimeout)
	timeout := time.NewTimer(env.ShutdownTimeout)
	defer timeout.Stop()
	var svcErr, httpErr error
	for pending := 2; pending > 0; pending-- {
		select {
		case svcErr = <-svcDone:
			svcDone = nil
		case httpErr = <-httpDone:
			httpDone = nil
		case <-timeout.C:
			return fmt.Errorf("%s did not stop within %s", name, env.ShutdownTimeout)
		}
	}
	if svcErr != nil && !errors.Is(svcErr, context.Canceled) {
		return svcErr
	}
	if httpErr != nil {
		return httpErr
	}
	log.Info("stopped")
	return nil
}
