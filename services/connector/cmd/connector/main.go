// Command connector runs ferry's connector service. Configuration comes from FERRY_*
// environment variables (see pkg/svcenv); /metrics and /healthz are served on
// FERRY_HTTP_ADDR; the connector also reads FERRY_TUNNEL_LISTEN, FERRY_TUNNEL_ADVERTISE,
// FERRY_KNOWN_HOSTS (colon-separated known_hosts files) and FERRY_LEASE_TTL.
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
	"github.com/ferrydesk/ferry/services/connector"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "connector:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	env, err := svcenv.Load(os.Getenv)
	if err != nil {
		return err
	}
	cfg := connector.Config{
		SecretsDir: env.SecretsDir, Concurrency: env.Concurrency,
		TunnelListen:    os.Getenv("FERRY_TUNNEL_LISTEN"),
		TunnelAdvertise: os.Getenv("FERRY_TUNNEL_ADVERTISE"),
	}
	if v := os.Getenv("FERRY_KNOWN_HOSTS"); v != "" {
		cfg.KnownHostsFiles = strings.Split(v, ":")
	}
	if v := os.Getenv("FERRY_LEASE_TTL"); v != "" {
		if cfg.LeaseTTL, err = time.ParseDuration(v); err != nil || cfg.LeaseTTL <= 0 {
			return fmt.Errorf("FERRY_LEASE_TTL: must be a positive duration such as 12h, not %q", v)
		}
	}
	return svcenv.Run(ctx, contracts.ServiceConnector, env, func(ctx context.Context, d svcenv.Deps) error {
		return connector.Run(ctx, cfg, connector.Deps{NC: d.NC, Registerer: d.Registerer, Logger: d.Logger, Ready: d.Ready})
	})
}
