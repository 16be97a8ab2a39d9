// Command cleanup runs ferry's cleanup service. Configuration comes from FERRY_*
// environment variables (see pkg/svcenv); /metrics and /healthz are served on
// FERRY_HTTP_ADDR; cleanup also reads FERRY_KNOWN_HOSTS (colon-separated known_hosts
// files) for the hosts it prunes on and removes leftovers from,
// FERRY_CLEANUP_SWEEP_EVERY (how often orphaned staging and hosts' leftovers are
// swept, default 10m) and FERRY_CLEANUP_LEFTOVERS_WAIT (how long remove-staging tries
// a host out of reach, default 30s).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/svcenv"
	"github.com/ferrydesk/ferry/services/cleanup"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cleanup:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	env, err := svcenv.Load(os.Getenv)
	if err != nil {
		return err
	}
	cfg := cleanup.Config{StagingDir: env.StagingDir, SecretsDir: env.SecretsDir, Concurrency: env.Concurrency}
	if v := os.Getenv("FERRY_KNOWN_HOSTS"); v != "" {
		cfg.KnownHostsFiles = strings.Split(v, ":")
	}
	for name, d := range map[string]*time.Duration{
		"FERRY_CLEANUP_SWEEP_EVERY":    &cfg.SweepEvery,
		"FERRY_CLEANUP_LEFTOVERS_WAIT": &cfg.LeftoversWait,
	} {
		if v := os.Getenv(name); v != "" {
			if *d, err = time.ParseDuration(v); err != nil || *d <= 0 {
				return fmt.Errorf("%s: must be a positive duration such as 10m, not %q", name, v)
			}
		}
	}
	return svcenv.Run(ctx, contracts.ServiceCleanup, env, func(ctx context.Context, d svcenv.Deps) error {
		return cleanup.Run(ctx, cfg, cleanup.Deps{NC: d.NC, Registerer: d.Registerer, Logger: d.Logger, Ready: d.Ready})
	})
}
