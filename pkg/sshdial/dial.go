package sshdial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/ferrydesk/ferry/contracts"
)

// Defaults applied by Dial to zero Options fields.
const (
	DefaultTimeout           = 20 * time.Second
	DefaultKeepaliveInterval = 10 * time.Second
	DefaultKeepaliveCountMax = 2
)

// Options configure Dial. The zero value is usable if Credential is set or the
// host's credential reference resolves below SecretsDir.
type Options struct {
	// SecretsDir is the directory holding one subdirectory per credential reference.
	SecretsDir string
	// Credential, if set, is used instead of loading host.Credential from SecretsDir.
	Credential *Credential
	// KnownHostsFiles are extra sources of pinned host keys (OpenSSH known_hosts).
	// Their @revoked entries are honoured.
	KnownHostsFiles []string
	// RequireFingerprint, if set, is the SHA256 fingerprint ("SHA256:...") the
	// host key must have, e.g. the one recorded in a session lease. It is checked
	// in addition to the pins; for a host without pins it replaces
	// trust-on-first-use.
	RequireFingerprint string
	// Timeout bounds the TCP connect plus the SSH handshake (DefaultTimeout if zero).
	// A deadline on the Dial context applies as well.
	Timeout time.Duration
	// Keepalive configures dead-peer detection.
	Keepalive Keepalive
	// Hooks receive metrics events.
	Hooks Hooks
	// Logger receives connection events (never secrets); nil discards them.
	Logger *slog.Logger
}

// Keepalive configures keepalive@openssh.com probes. A probe is sent every
// Interval; once CountMax consecutive intervals pass without a reply the
// connection is closed and fails with ErrPeerUnresponsive, so a dead peer is
// noticed within (CountMax+1)*Interval — 30 s with the defaults.
type Keepalive struct {
	Interval time.Duration // DefaultKeepaliveInterval if zero; negative disables keepalives
	CountMax int           // DefaultKeepaliveCountMax if zero
}

// ConnInfo describes an established connection.
type ConnInfo struct {
	Host    string // inventory name
	Address string // host:port dialled
	// HostKey is the verified host key; Fingerprint its SHA256 fingerprint ("SHA256:...").
	HostKey     ssh.PublicKey
	Fingerprint string
	// TrustedOnFirstUse is true when the host had no pinned key and HostKey was
	// accepted because the host allows trust-on-first-use: the caller should pin
	// AuthorizedKey(HostKey).
	TrustedOnFirstUse bool
	// AuthMethod is the authentication method that succeeded ("publickey",
	// "keyboard-interactive", "password"; "a+b" for multi-factor logins).
	AuthMethod    string
	Handshake     time.Duration // TCP connected → authenticated
	ServerVersion string
}

// Dial connects and authenticates to host. The host key is verified during the
// key exchange against host.HostKeys and opts.KnownHostsFiles, so a changed key
// stops the connection before any credential is sent. Errors wrap one of the
// sentinel errors (see Retryable).
func Dial(ctx context.Context, host contracts.Host, opts Options) (*Client, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("host", host.Name)
	hooks := opts.Hooks

	if host.Address == "" || host.User == "" {
		hooks.connection(host.Name, MethodNone, "invalid_host")
		return nil, fmt.Errorf("host %q: address and user are required", host.Name)
	}
	port := host.Port
	if port == 0 {
		port = 22
	}
	address := net.JoinHostPort(host.Address, strconv.Itoa(port))

	cred := opts.Credential
	if cred == nil {
		var err error
		if cred, err = LoadCredential(opts.SecretsDir, host.Credential); err != nil {
			hooks.connection(host.Name, MethodNone, "credential")
			log.Warn("ssh credential unusable", "error", err)
			return nil, err
		}
	}
	check, err := newHostKeyCheck(host.Name, address, host.HostKeys, opts.KnownHostsFiles,
		host.TrustOnFirstUse, opts.RequireFingerprint)
	if err != nil {
		hooks.connection(host.Name, MethodNone, "invalid_host")
		return nil, err
	}

	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	auth := newAuth(dctx, cred)
	defer auth.close()
	config := &ssh.ClientConfig{
		Config:            ssh.Config{Ciphers: preferredCiphers()},
		User:              host.User,
		HostKeyCallback:   check.verify,
		HostKeyAlgorithms: check.algorithms(),
		AuthCallback:      auth.next,
	}

	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", address)
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			hooks.connection(host.Name, MethodNone, "canceled")
			return nil, fmt.Errorf("ssh %s: dial %s: %w", host.Name, address, ctx.Err())
		}
		outcome := "unreachable"
		var netErr net.Error
		if dctx.Err() != nil || (errors.As(err, &netErr) && netErr.Timeout()) {
			outcome = "timeout"
		}
		hooks.connection(host.Name, MethodNone, outcome)
		return nil, &Error{Host: host.Name, Kind: ErrUnreachable, Err: fmt.Errorf("ssh %s: cannot reach %s: %w", host.Name, address, err)}
	}

	// The handshake API has no context: enforce ours with a deadline and by
	// closing the connection on cancellation.
	start := time.Now()
	if dl, ok := dctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(dctx, func() { conn.Close() })
	sshConn, chans, reqs, err := ssh.NewClientConn(conn, address, config)
	if !stop() && err == nil {
		sshConn.Close()
		err = dctx.Err()
	}
	if err != nil {
		conn.Close()
		kind, outcome, derr := classify(ctx, dctx, host, address, check, auth, err)
		hooks.connection(host.Name, auth.method(), outcome)
		if kind != "" {
			hooks.hostKeyFailure(host.Name, kind)
		}
		log.Warn("ssh connection failed", "address", address, "outcome", outcome, "error", derr)
		return nil, derr
	}
	conn.SetDeadline(time.Time{})
	handshake := time.Since(start)

	key, firstUse, _, _ := check.result()
	c := newClient(ssh.NewClient(sshConn, chans, reqs), ConnInfo{
		Host:              host.Name,
		Address:           address,
		HostKey:           key,
		Fingerprint:       ssh.FingerprintSHA256(key),
		TrustedOnFirstUse: firstUse,
		AuthMethod:        auth.method(),
		Handshake:         handshake,
		ServerVersion:     string(sshConn.ServerVersion()),
	}, opts.Keepalive, hooks, log)
	hooks.connection(host.Name, c.info.AuthMethod, "ok")
	hooks.handshake(handshake)
	log.Debug("ssh connected", "address", address, "fingerprint", c.info.Fingerprint,
		"trusted_on_first_use", firstUse, "method", c.info.AuthMethod, "handshake", handshake)
	return c, nil
}

// preferredCiphers puts aes128-gcm@openssh.com first, then x/crypto's safe defaults.
func preferredCiphers() []string {
	ciphers := []string{ssh.CipherAES128GCM}
	for _, c := range ssh.SupportedAlgorithms().Ciphers {
		if c != ssh.CipherAES128GCM {
			ciphers = append(ciphers, c)
		}
	}
	return ciphers
}

// classify turns a failed handshake into an error wrapping a sentinel, the
// host-key failure kind (if any) and the outcome label for Hooks.Connection.
func classify(ctx, dctx context.Context, host contracts.Host, address string, check *hostKeyCheck, auth *auth, err error) (hostKeyKind, outcome string, _ error) {
	if _, _, kind, hkErr := check.result(); hkErr != nil {
		var sentinel error
		switch kind {
		case "unknown":
			sentinel = ErrHostKeyUnknown
		case "changed":
			sentinel = ErrHostKeyChanged
		default:
			sentinel = ErrHostKeyRevoked
		}
		return kind, "host_key_" + kind, &Error{Host: host.Name, Kind: sentinel, Err: hkErr}
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return "", "canceled", fmt.Errorf("ssh %s: handshake with %s: %w", host.Name, address, context.Canceled)
	}
	var netErr net.Error
	if dctx.Err() != nil || (errors.As(err, &netErr) && netErr.Timeout()) {
		return "", "timeout", &Error{Host: host.Name, Kind: ErrUnreachable,
			Err: fmt.Errorf("ssh %s: handshake with %s timed out: %w", host.Name, address, err)}
	}
	if started, detail := auth.failure(); started {
		return "", "auth_failed", &Error{Host: host.Name, Kind: ErrAuthFailed,
			Err: fmt.Errorf("ssh %s: authentication as %q failed: %s", host.Name, host.User, detail)}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.As(err, &netErr) {
		return "", "unreachable", &Error{Host: host.Name, Kind: ErrUnreachable,
			Err: fmt.Errorf("ssh %s: %s closed the connection during the handshake: %w", host.Name, address, err)}
	}
	return "", "handshake", &Error{Host: host.Name, Kind: ErrHandshake,
		Err: fmt.Errorf("ssh %s: handshake with %s: %w", host.Name, address, err)}
}

// Hooks are optional callbacks through which the caller counts metrics; nil fields
// are skipped. They are called synchronously and must be safe for concurrent use.
type Hooks struct {
	// Connection is called once per Dial with the inventory name of the host, the
	// authentication method that succeeded (or was tried last, "none" before
	// authentication) and the outcome: "ok", "auth_failed", "host_key_unknown",
	// "host_key_changed", "host_key_revoked", "timeout" (no TCP connection or no
	// handshake within the dial timeout), "unreachable" (refused, reset, no route),
	// "credential", "handshake", "canceled" or "invalid_host" (no address or user,
	// malformed pinned key).
	Connection func(host, method, outcome string)
	// Handshake is called with the duration of every successful handshake.
	Handshake func(time.Duration)
	// HostKeyFailure is called with the host's inventory name and "unknown",
	// "changed" or "revoked".
	HostKeyFailure func(host, kind string)
	// SessionsActive is called with +1 when a connection is established and -1
	// when it ends.
	SessionsActive func(delta int)
	// TunnelsActive is called with +1 when a tunnel opens and -1 when it closes.
	TunnelsActive func(delta int)
}

func (h Hooks) connection(host, method, outcome string) {
	if h.Connection != nil {
		h.Connection(host, method, outcome)
	}
}

func (h Hooks) handshake(d time.Duration) {
	if h.Handshake != nil {
		h.Handshake(d)
	}
}

func (h Hooks) hostKeyFailure(host, kind string) {
	if h.HostKeyFailure != nil {
		h.HostKeyFailure(host, kind)
	}
}

func (h Hooks) sessions(delta int) {
	if h.SessionsActive != nil {
		h.SessionsActive(delta)
	}
}

func (h Hooks) tunnels(delta int) {
	if h.TunnelsActive != nil {
		h.TunnelsActive(delta)
	}
}
