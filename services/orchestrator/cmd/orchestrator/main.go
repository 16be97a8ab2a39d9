// Command orchestrator runs ferry's orchestrator. Configuration comes from FERRY_*
// environment variables (see pkg/svcenv) and:
//
//	FERRY_PROVISION      create/update streams, consumers and buckets at start (default true)
//	FERRY_REPLICAS       replicas of streams and buckets when provisioning (default 1)
//	FERRY_EVENTS_MAX_AGE how long events are kept (default 168h)
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/svcenv"
	"github.com/ferrydesk/ferry/services/orchestrator"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "orchestrator:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	env, err := svcenv.Load(os.Getenv)
	cfg, cerr := config(os.Getenv)
	if err = errors.Join(err, cerr); err != nil {
		return err
	}
	return svcenv.Run(ctx, contracts.ServiceOrchestrator, env, func(ctx context.Context, d svcenv.Deps) error {
		return orchestrator.Run(ctx, cfg, orchestrator.Deps{NC: d.NC, Registerer: d.Registerer, Logger: d.Logger, Ready: d.Ready})
	})
}

func config(getenv func(string) string) (orchestrator.Config, error) {
	cfg := orchestrator.Config{Provision: true, Replicas: 1, EventsMaxAge: 7 * 24 * time.Hour}
	var errs []error
	if v := getenv("FERRY_PROVISION"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("FERRY_PROVISION: must be true or false, not %q", v))
		}
		cfg.Provision = b
	}
	if v := getenv("FERRY_REPLICAS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || (n != 1 && n != 3 && n != 5) {
			errs = append(errs, fmt.Errorf("FERRY_REPLICAS: must be 1, 3 or 5, not %q", v))
		}
		cfg.Replicas = n
	}
	if v := getenv("FERRY_EVENTS_MAX_AGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("FERRY_EVENTS_MAX_AGE: must be a positive duration such as 168h, not %q", v))
		}
		cfg.EventsMaxAge = d
	}
	return cfg, errors.Join(errs...)
}
