// Package service is the connector service: one method per step operation, typed
// arguments and results from contracts. Transport (JetStream), logging and metrics wrap
// it from outside (see pkg/worker).
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/ferrydesk/ferry/pkg/logctx"
	"github.com/ferrydesk/ferry/pkg/session"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/worker"
)

// Service executes the connector steps. Every method is idempotent: a command may be
// delivered again after the method did its work.
type Service interface {
	// Connect opens (or re-verifies) an SSH session to the host and records a lease.
	Connect(ctx context.Context, args contracts.ConnectArgs) (contracts.ConnectResult, error)
	// Tunnel forwards a local listener to a port as seen from the host.
	Tunnel(ctx context.Context, args contracts.TunnelArgs) (contracts.TunnelResult, error)
	// Close closes every lease, connection and tunnel of the job.
	Close(ctx context.Context, args contracts.CloseArgs) (CloseResult, error)
}

// CloseResult says how many sessions a close step ended.
type CloseResult struct {
	Sessions int `json:"sessions"`
	Tunnels  int `json:"tunnels"`
}

// Ops binds the methods of s to their operations for worker.NewHandler.
func Ops(s Service) []worker.Op {
	return []worker.Op{
		worker.Typed(contracts.OpConnect, s.Connect),
		worker.Typed(contracts.OpTunnel, s.Tunnel),
		worker.Typed(contracts.OpClose, s.Close),
	}
}

// Config of the connector's behaviour.
type Config struct {
	// LeaseTTL is how long a session lease lives without its job closing it.
	LeaseTTL time.Duration
	// TunnelListen is the address tunnels listen on (host only; the port is picked).
	TunnelListen string
	// TunnelAdvertise is the host name other services reach tunnels by.
	TunnelAdvertise string
	// Instance names this replica in leases.
	Instance string
}

// Connector is the connector service of this version.
type Connector struct {
	cfg    Config
	dialer *session.Dialer
	log    *slog.Logger
	// life bounds tunnels: they outlive the step that opened them, not the service.
	life context.Context

	mu      sync.Mutex
	tunnels map[string]map[string]*sshdial.Tunnel // lease key → remote → tunnel
}

// New returns the connector. life is the service's lifetime: tunnels close with it.
func New(life context.Context, cfg Config, dialer *session.Dialer, log *slog.Logger) *Connector {
	return &Connector{cfg: cfg, dialer: dialer, log: log, life: life, tunnels: map[string]map[string]*sshdial.Tunnel{}}
}

// Connect dials the host, verifies its key (strict, or trust-on-first-use where the
// host entry asks, then pinned), authenticates, and records the job's lease. A repeated
// connect of the same job and host re-verifies under the existing lease.
func (c *Connector) Connect(ctx context.Context, args contracts.ConnectArgs) (contracts.ConnectResult, error) {
	job := worker.JobID(ctx)
	if !contracts.ValidID(args.Host) {
		return contracts.ConnectResult{}, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("connect: %q is not a host name", args.Host))
	}
	key := contracts.LeaseKey(job, args.Host)
	if ls, _, err := c.dialer.Leases.Get(ctx, job, args.Host); err == nil {
		if _, _, err := c.dialer.Client(ctx, job, args.Host); err != nil {
			return contracts.ConnectResult{}, err
		}
		return contracts.ConnectResult{Lease: key, Fingerprint: ls.Fingerprint, Expires: ls.Expires}, nil
	}
	client, err := c.dialer.Dial(ctx, args.Host, "")
	if err != nil {
		return contracts.ConnectResult{}, err
	}
	info := client.Info()
	if info.TrustedOnFirstUse {
		if err := c.pin(ctx, args.Host, client); err != nil {
			client.Close()
			return contracts.ConnectResult{}, err
		}
	}
	now := time.Now().UTC()
	ls := contracts.Lease{
		JobID: job, Host: args.Host, Address: info.Address, Fingerprint: info.Fingerprint,
		AuthMethod: info.AuthMethod, Connector: c.cfg.Instance, Created: now, Expires: now.Add(c.cfg.LeaseTTL),
	}
	if err := c.dialer.Leases.Put(ctx, ls); err != nil {
		client.Close()
		return contracts.ConnectResult{}, err
	}
	// Keep the verified connection for the job's tunnels; a connection already pooled
	// under this lease (a redelivered command) wins and ours is closed.
	pooled, err := c.dialer.Pool.Get(ctx, key, func(context.Context) (*sshdial.Client, error) { return client, nil })
	if err != nil {
		client.Close()
		return contracts.ConnectResult{}, err
	}
	if pooled != client {
		client.Close()
	}
	logctx.From(ctx).Info("session open", "fingerprint", info.Fingerprint, "auth_method", info.AuthMethod,
		"trusted_on_first_use", info.TrustedOnFirstUse, "handshake", info.Handshake)
	return contracts.ConnectResult{Lease: key, Fingerprint: info.Fingerprint, Expires: ls.Expires}, nil
}

// pin records the key a trust-on-first-use host presented. If another connection
// pinned a key meanwhile, ours must be that key.
func (c *Connector) pin(ctx context.Context, host string, client *sshdial.Client) error {
	key := sshdial.AuthorizedKey(client.Info().HostKey)
	err := c.dialer.Hosts.Pin(ctx, host, key, true)
	if errors.Is(err, inventory.ErrPinned) {
		h, _, gerr := c.dialer.Hosts.Get(ctx, host)
		if gerr != nil {
			return gerr
		}
		for _, k := range h.HostKeys {
			if k == key {
				return nil
			}
		}
		return worker.Permanent(contracts.CodeHostKey, fmt.Errorf("host key changed for %s while it was being trusted on first use: presented %s", host, client.Info().Fingerprint))
	}
	if err == nil {
		logctx.From(ctx).Warn("host key trusted on first use and pinned", "fingerprint", client.Info().Fingerprint)
	}
	return err
}

// Tunnel forwards a listener on the connector to args.Remote as seen from the host,
// under the job's lease, and records it in the lease.
func (c *Connector) Tunnel(ctx context.Context, args contracts.TunnelArgs) (contracts.TunnelResult, error) {
	job := worker.JobID(ctx)
	if _, port, err := net.SplitHostPort(args.Remote); err != nil || !validPort(port) {
		return contracts.TunnelResult{}, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("tunnel: remote %q is not host:port", args.Remote))
	}
	key := contracts.LeaseKey(job, args.Host)
	if t := c.tunnel(key, args.Remote); t != nil {
		return contracts.TunnelResult{Addr: c.advertise(t)}, nil
	}
	client, _, err := c.dialer.Client(ctx, job, args.Host)
	if err != nil {
		return contracts.TunnelResult{}, err
	}
	t, err := client.Forward(c.life, net.JoinHostPort(c.cfg.TunnelListen, "0"), args.Remote)
	if err != nil {
		return contracts.TunnelResult{}, session.Classify(err)
	}
	addr := c.advertise(t)
	c.keep(key, args.Remote, t)
	err = c.dialer.Leases.Update(ctx, job, args.Host, func(ls *contracts.Lease) {
		ls.Tunnels = append(ls.Tunnels, contracts.Tunnel{Remote: args.Remote, Addr: addr})
	})
	if err != nil {
		c.drop(key)
		return contracts.TunnelResult{}, err
	}
	logctx.From(ctx).Info("tunnel open", "remote", args.Remote, "addr", addr)
	return contracts.TunnelResult{Addr: addr}, nil
}

// RestoreTunnels re-opens, on the same ports, the tunnels that live leases recorded
// for this connector's host name: a connector killed and started again (same name,
// same advertised address) gives the jobs in flight their tunnels back, so that a
// dump retried after the restart reaches its database. A tunnel that cannot be
// re-opened is logged; the step that needs it then fails with a clear error.
func (c *Connector) RestoreTunnels(ctx context.Context) {
	leases, err := c.dialer.Leases.All(ctx)
	if err != nil {
		c.log.Warn("restoring tunnels: listing leases", "error", err)
		return
	}
	self, _, _ := strings.Cut(c.cfg.Instance, "/")
	for _, ls := range leases {
		owner, _, _ := strings.Cut(ls.Connector, "/")
		if len(ls.Tunnels) == 0 || owner != self || c.dialer.Leases.Expired(ls) {
			continue
		}
		log := c.log.With("job_id", ls.JobID, "host", ls.Host)
		key := contracts.LeaseKey(ls.JobID, ls.Host)
		for _, tn := range ls.Tunnels {
			adv, port, err := net.SplitHostPort(tn.Addr)
			if err != nil || adv != c.cfg.TunnelAdvertise || c.tunnel(key, tn.Remote) != nil {
				continue
			}
			client, _, err := c.dialer.Client(ctx, ls.JobID, ls.Host)
			if err != nil {
				log.Warn("restoring tunnel: connecting", "remote", tn.Remote, "error", err)
				continue
			}
			t, err := client.Forward(c.life, net.JoinHostPort(c.cfg.TunnelListen, port), tn.Remote)
			if err != nil {
				log.Warn("restoring tunnel: listening", "remote", tn.Remote, "addr", tn.Addr, "error", err)
				continue
			}
			c.keep(key, tn.Remote, t)
			log.Info("tunnel restored after a restart", "remote", tn.Remote, "addr", tn.Addr)
		}
		if err := c.dialer.Leases.Update(ctx, ls.JobID, ls.Host, func(l *contracts.Lease) { l.Connector = c.cfg.Instance }); err != nil {
			log.Warn("restoring tunnels: updating the lease", "error", err)
		}
	}
}

// keep records an open tunnel of the lease key to remote.
func (c *Connector) keep(key, remote string, t *sshdial.Tunnel) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tunnels[key] == nil {
		c.tunnels[key] = map[string]*sshdial.Tunnel{}
	}
	c.tunnels[key][remote] = t
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n > 0 && n < 65536
}

func (c *Connector) tunnel(key, remote string) *sshdial.Tunnel {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tunnels[key][remote]
	if t == nil {
		return nil
	}
	select {
	case <-t.Done():
		delete(c.tunnels[key], remote)
		return nil
	default:
		return t
	}
}

func (c *Connector) advertise(t *sshdial.Tunnel) string {
	_, port, _ := net.SplitHostPort(t.Addr().String())
	return net.JoinHostPort(c.cfg.TunnelAdvertise, port)
}

// Close revokes every lease of the job, closing its tunnels and connections here; the
// other services (and connector replicas) drop theirs when they see the revocation.
func (c *Connector) Close(ctx context.Context, _ contracts.CloseArgs) (CloseResult, error) {
	job := worker.JobID(ctx)
	leases, err := c.dialer.Leases.OfJob(ctx, job)
	if err != nil {
		return CloseResult{}, err
	}
	// Tunnels and connections this replica holds for the job, lease or not (an expired
	// lease may already be gone from the bucket), are closed here before the leases
	// go: a revocation closes them too, but in the watcher's goroutine, which may
	// still be at it when the step ends and the job is reported finished.
	keys := c.keysOfJob(job)
	for _, ls := range leases {
		keys = append(keys, contracts.LeaseKey(job, ls.Host))
	}
	for _, key := range keys {
		c.drop(key)
	}
	var res CloseResult
	for _, ls := range leases {
		if err := c.dialer.Leases.Delete(ctx, job, ls.Host); err != nil {
			return res, err
		}
		res.Sessions++
		res.Tunnels += len(ls.Tunnels)
	}
	logctx.From(ctx).Info("sessions closed", "sessions", res.Sessions, "tunnels", res.Tunnels)
	return res, nil
}

func (c *Connector) keysOfJob(job string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var keys []string
	for k := range c.tunnels {
		if len(k) > len(job) && k[:len(job)+1] == job+"." {
			keys = append(keys, k)
		}
	}
	return keys
}

// Drop closes the tunnels and the connection of a lease held here. It runs for the
// job's own close step and for every revocation seen on the lease bucket.
func (c *Connector) drop(key string) {
	c.mu.Lock()
	ts := c.tunnels[key]
	delete(c.tunnels, key)
	c.mu.Unlock()
	for _, t := range ts {
		_ = t.Close()
	}
	c.dialer.Pool.Drop(key)
}

// CloseTunnels closes every tunnel held here and waits until they are closed. The
// leases stay: a connector started again restores their tunnels.
func (c *Connector) CloseTunnels() {
	c.mu.Lock()
	all := c.tunnels
	c.tunnels = map[string]map[string]*sshdial.Tunnel{}
	c.mu.Unlock()
	for _, ts := range all {
		for _, t := range ts {
			_ = t.Close()
		}
	}
}

// Revoked is called with the key of every revoked lease.
func (c *Connector) Revoked(key string) { c.drop(key) }

// Sweep deletes expired leases from the bucket (a job that crashed never closes its
// sessions); every service drops their connections when they see it.
func (c *Connector) Sweep(ctx context.Context) {
	leases, err := c.dialer.Leases.All(ctx)
	if err != nil {
		c.log.Warn("sweeping leases", "error", err)
		return
	}
	for _, ls := range leases {
		if c.dialer.Leases.Expired(ls) {
			c.log.Info("lease expired; revoking", "job_id", ls.JobID, "host", ls.Host, "expired", ls.Expires)
			if err := c.dialer.Leases.Delete(ctx, ls.JobID, ls.Host); err != nil {
				c.log.Warn("revoking expired lease", "job_id", ls.JobID, "host", ls.Host, "error", err)
			}
		}
	}
}
