package session

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// The lease dialer as transfer, archiver and cleanup use it, against a real sshd.

func setup(t *testing.T) (*Dialer, *sshtest.Server, context.CancelFunc) {
	t.Helper()
	srv := bustest.Start(t, bus.Topology{})
	_, js := srv.Connect(t, "test")
	ctx := context.Background()
	leases, err := OpenLeases(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	hosts, err := inventory.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	sshd := sshtest.Start(t, sshtest.Options{})
	secrets := t.TempDir()
	sshtest.WriteCredential(t, secrets, "cred", map[string]string{sshdial.FilePassword: sshd.User().Password})
	if err := hosts.Put(ctx, sshd.Host("customer", "cred")); err != nil {
		t.Fatal(err)
	}
	d := &Dialer{Leases: leases, Hosts: hosts, SecretsDir: secrets, Pool: sshdial.NewPool(), Options: sshdial.Options{Timeout: 10 * time.Second}}
	t.Cleanup(func() { d.Pool.Close() })
	rctx, cancel := context.WithCancel(ctx)
	go func() { _ = d.Run(rctx) }()
	t.Cleanup(cancel)
	return d, sshd, cancel
}

// lease records a lease as the connector's connect step does, with the key the
// server presents.
func lease(t *testing.T, d *Dialer, job string, fingerprint string, ttl time.Duration) {
	t.Helper()
	now := time.Now()
	if err := d.Leases.Put(context.Background(), contracts.Lease{JobID: job, Host: "customer", Fingerprint: fingerprint, Created: now, Expires: now.Add(ttl)}); err != nil {
		t.Fatal(err)
	}
}

func TestClientUnderLeaseIsPooledAndDroppedOnRevoke(t *testing.T) {
	d, _, _ := setup(t)
	ctx := context.Background()
	c, err := d.Dial(ctx, "customer", "")
	if err != nil {
		t.Fatal(err)
	}
	fp := c.Info().Fingerprint
	c.Close()
	lease(t, d, "job1", fp, time.Hour)

	a, _, err := d.Client(ctx, "job1", "customer")
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := d.Client(ctx, "job1", "customer")
	if err != nil || a != b {
		t.Fatalf("second Client: %v (same connection: %v)", err, a == b)
	}
	if err := d.Leases.Delete(ctx, "job1", "customer"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the pooled connection survived the revocation of its lease")
	}
	_, _, err = d.Client(ctx, "job1", "customer")
	if se := stepError(err); se == nil || se.Retryable || se.Code != contracts.CodeInvalidCommand || !strings.Contains(se.Message, "connect step has not run") {
		t.Fatalf("after close: %v", err)
	}
}

func TestLeaseRequiresTheVerifiedKey(t *testing.T) {
	d, sshd, _ := setup(t)
	ctx := context.Background()
	c, err := d.Dial(ctx, "customer", "")
	if err != nil {
		t.Fatal(err)
	}
	fp := c.Info().Fingerprint
	c.Close()
	lease(t, d, "job1", fp, time.Hour)
	// The host's key changes after the connector verified it, and the inventory is
	// re-pinned to the new key: the lease still holds to the key the job verified.
	sshd.Restart(true)
	h, _, _ := d.Hosts.Get(ctx, "customer")
	h.HostKeys = sshd.HostKeys()
	if err := d.Hosts.Put(ctx, h); err != nil {
		t.Fatal(err)
	}
	_, _, err = d.Client(ctx, "job1", "customer")
	if se := stepError(err); se == nil || se.Code != contracts.CodeHostKey || se.Retryable {
		t.Fatalf("got %v", err)
	}
}

func TestExpiredLeaseIsRefused(t *testing.T) {
	d, _, _ := setup(t)
	lease(t, d, "job1", "SHA256:x", -time.Second)
	_, _, err := d.Client(context.Background(), "job1", "customer")
	if se := stepError(err); se == nil || se.Retryable || !strings.Contains(se.Message, "lease expired") {
		t.Fatalf("got %v", err)
	}
}

func stepError(err error) *contracts.StepError {
	var se *contracts.StepError
	if errors.As(err, &se) {
		return se
	}
	return nil
}
