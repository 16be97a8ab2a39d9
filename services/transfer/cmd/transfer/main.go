// Command transfer runs ferry's transfer service. Configuration comes from FERRY_*
// environment variables (see pkg/svcenv); /metrics and /healthz are served on
// FERRY_HTTP_ADDR; transfer also reads FERRY_KNOWN_HOSTS (colon-separated known_hosts
// files), FERRY_TRANSFER_FILES_IN_FLIGHT, FERRY_TRANSFER_REQUESTS_PER_FILE and
// FERRY_TRANSFER_NO_EXEC (true: never run commands on hosts) and
// FERRY_TRANSFER_IN_PROGRESS_EVERY (period of in-progress acks, default 10s).
//
// Unless GOGC is set, the garbage collector runs at GOGC=50: the service's live heap
// is a few tens of MiB of recycled buffers (SFTP requests, zstd frames of a bundle),
// and collecting at half again its size instead of twice it keeps a bundle of a GiB
// at about 56 MiB RSS instead of 74. It costs CPU: receiving a GiB over SSH took about
// 1 user CPU-s more than at GOGC=100 (3.0 against 1.9; see the README's benchmarks).
// GOGC=100 trades that memory back for it.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/svcenv"
	"github.com/ferrydesk/ferry/services/transfer"
)

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "transfer:", err)
		os.Exit(1)
	}
}

// gcPercent is the GOGC the service runs at unless GOGC is set.
const gcPercent = 50

func run(ctx context.Context) error {
	env, err := svcenv.Load(os.Getenv)
	if err != nil {
		return err
	}
	cfg := transfer.Config{StagingDir: env.StagingDir, SecretsDir: env.SecretsDir, Concurrency: env.Concurrency}
	if v := os.Getenv("FERRY_KNOWN_HOSTS"); v != "" {
		cfg.KnownHostsFiles = strings.Split(v, ":")
	}
	var errs []error
	positive := func(name string, dst *int) {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				errs = append(errs, fmt.Errorf("%s: must be a positive number, not %q", name, v))
			}
			*dst = n
		}
	}
	positive("FERRY_TRANSFER_FILES_IN_FLIGHT", &cfg.FilesInFlight)
	positive("FERRY_TRANSFER_REQUESTS_PER_FILE", &cfg.RequestsPerFile)
	if v := os.Getenv("FERRY_TRANSFER_NO_EXEC"); v != "" {
		if cfg.NoExec, err = strconv.ParseBool(v); err != nil {
			errs = append(errs, fmt.Errorf("FERRY_TRANSFER_NO_EXEC: must be true or false, not %q", v))
		}
	}
	if v := os.Getenv("FERRY_TRANSFER_IN_PROGRESS_EVERY"); v != "" {
		if cfg.InProgressEvery, err = time.ParseDuration(v); err != nil || cfg.InProgressEvery <= 0 {
			errs = append(errs, fmt.Errorf("FERRY_TRANSFER_IN_PROGRESS_EVERY: must be a positive duration such as 10s, not %q", v))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return svcenv.Run(ctx, contracts.ServiceTransfer, env, func(ctx context.Context, d svcenv.Deps) error {
		return transfer.Run(ctx, cfg, transfer.Deps{NC: d.NC, Registerer: d.Registerer, Logger: d.Logger, Ready: d.Ready})
	})
}
