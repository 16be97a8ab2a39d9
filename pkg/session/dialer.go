package session

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/worker"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Dialer hands out SSH clients under session leases: one pooled connection per lease,
// dropped when the lease is revoked or expires.
type Dialer struct {
	Leases     *Leases
	Hosts      *inventory.Store
	SecretsDir string
	Pool       *sshdial.Pool
	// Options are passed to sshdial.Dial (hooks, keepalive, logger); Credential and
	// RequireFingerprint are set per dial.
	Options sshdial.Options
	Log     *slog.Logger
}

// Client returns the connection of job's session on host, dialling it under the lease
// when this service has none yet. The host must present the key the connector verified.
func (d *Dialer) Client(ctx context.Context, job, host string) (*sshdial.Client, contracts.Lease, error) {
	ls, _, err := d.Leases.Get(ctx, job, host)
	if err != nil {
		if errors.Is(err, ErrNoLease) || errors.Is(err, ErrLeaseExpired) {
			return nil, ls, worker.Permanent(contracts.CodeInvalidCommand, err)
		}
		return nil, ls, err
	}
	c, err := d.Pool.Get(ctx, contracts.LeaseKey(job, host), func(ctx context.Context) (*sshdial.Client, error) {
		return d.dial(ctx, host, ls.Fingerprint)
	})
	return c, ls, err
}

// Dial connects to an inventory host and verifies its key: with fingerprint set, the host
// must present exactly that key. Errors are classified for the step's retry policy.
func (d *Dialer) Dial(ctx context.Context, host, fingerprint string) (*sshdial.Client, error) {
	return d.dial(ctx, host, fingerprint)
}

// Host returns the inventory entry of name; a name the inventory does not hold is a
// permanent not_found step error.
func (d *Dialer) Host(ctx context.Context, name string) (contracts.Host, error) {
	h, _, err := d.Hosts.Get(ctx, name)
	if errors.Is(err, inventory.ErrUnknownHost) {
		return h, worker.Permanent(contracts.CodeNotFound, err)
	}
	return h, err
}

func (d *Dialer) dial(ctx context.Context, name, fingerprint string) (*sshdial.Client, error) {
	h, err := d.Host(ctx, name)
	if err != nil {
		return nil, err
	}
	cred, err := sshdial.LoadCredential(d.SecretsDir, h.Credential)
	if err != nil {
		return nil, Classify(err)
	}
	opts := d.Options
	opts.SecretsDir = d.SecretsDir
	opts.Credential = cred
	opts.RequireFingerprint = fingerprint
	opts.Logger = jobLogger(ctx, opts.Logger)
	c, err := sshdial.Dial(ctx, h, opts)
	if err != nil {
		return nil, Classify(err)
	}
	return c, nil
}

// Classify maps SSH errors to step errors: host-key and credential problems are
// permanent (no retry can fix them), an unreachable or silent peer is retryable.
func Classify(err error) error {
	var se *contracts.StepError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		return err
	case errors.Is(err, sshdial.ErrHostKeyChanged), errors.Is(err, sshdial.ErrHostKeyUnknown), errors.Is(err, sshdial.ErrHostKeyRevoked):
		return worker.Permanent(contracts.CodeHostKey, err)
	case errors.Is(err, sshdial.ErrAuthFailed), errors.Is(err, sshdial.ErrPassphrase), errors.Is(err, sshdial.ErrCredential):
		return worker.Permanent(contracts.CodeAuth, err)
	case sshdial.Retryable(err), errors.Is(err, context.DeadlineExceeded):
		return worker.Retryable(contracts.CodeUnreachable, err)
	}
	return worker.Retryable(contracts.CodeInternal, err)
}

// Run drops pooled connections whose lease is revoked or expired, until ctx ends.
func (d *Dialer) Run(ctx context.Context) error {
	go d.sweep(ctx)
	return d.Leases.WatchRevocations(ctx, func(key string) {
		if d.Log != nil {
			d.Log.Debug("lease revoked; dropping connection", "lease", key)
		}
		d.Pool.Drop(key)
	})
}

// sweep drops connections of expired leases (nothing deletes an expired lease when its
// job crashed; the connector's sweep deletes it from the bucket too).
func (d *Dialer) sweep(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			leases, err := d.Leases.All(ctx)
			if err != nil {
				continue
			}
			for _, ls := range leases {
				if d.Leases.Expired(ls) {
					d.Pool.Drop(contracts.LeaseKey(ls.JobID, ls.Host))
				}
			}
		}
	}
}

// DialerConfig says how a service dials hosts.
type DialerConfig struct {
	SecretsDir      string
	KnownHostsFiles []string
	Keepalive       sshdial.Keepalive
	DialTimeout     time.Duration
}

// OpenDialer binds to the lease and host buckets (waiting for them to be provisioned)
// and returns a Dialer with a pool of its own, counting SSH connections on reg. The
// caller closes the Dialer's Pool when done and runs Run (or watches revocations itself).
func OpenDialer(ctx context.Context, js jetstream.JetStream, cfg DialerConfig, reg prometheus.Registerer, log *slog.Logger) (*Dialer, error) {
	leases, err := OpenLeases(ctx, js)
	if err != nil {
		return nil, err
	}
	hosts, err := inventory.Open(ctx, js)
	if err != nil {
		return nil, err
	}
	return &Dialer{
		Leases: leases, Hosts: hosts, SecretsDir: cfg.SecretsDir, Pool: sshdial.NewPool(), Log: log,
		Options: sshdial.Options{
			KnownHostsFiles: cfg.KnownHostsFiles, Keepalive: cfg.Keepalive, Timeout: cfg.DialTimeout,
			Hooks: sshdial.NewMetrics(reg).Hooks(), Logger: log,
		},
	}, nil
}

// jobLogger adds the job id and trace of the step running in ctx to log, so the SSH
// lines of a connection (handshake failures, the connection ending) name their job.
func jobLogger(ctx context.Context, log *slog.Logger) *slog.Logger {
	job := worker.JobID(ctx)
	if log == nil || job == "" {
		return log
	}
	log = log.With("job_id", job)
	if t, ok := bus.TraceFrom(ctx); ok {
		log = log.With("trace_id", t.TraceID, "span_id", t.SpanID)
	}
	return log
}
