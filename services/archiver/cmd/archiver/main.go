// Command archiver runs ferry's archiver service. Configuration comes from FERRY_*
// environment variables (see pkg/svcenv); /metrics and /healthz are served on
// FERRY_HTTP_ADDR.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/svcenv"
	"github.com/ferrydesk/ferry/services/archiver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "archiver:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	env, err := svcenv.Load(os.Getenv)
	if err != nil {
		return err
	}
	cfg := archiver.Config{StagingDir: env.StagingDir, SecretsDir: env.SecretsDir, Concurrency: env.Concurrency}
	return svcenv.Run(ctx, contracts.ServiceArchiver, env, func(ctx context.Context, d svcenv.Deps) error {
		return archiver.Run(ctx, cfg, archiver.Deps{NC: d.NC, Registerer: d.Registerer, Logger: d.Logger, Ready: d.Ready})
	})
}
