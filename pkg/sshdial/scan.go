package sshdial

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// scanFamilies are the host-key algorithms ScanHostKeys asks for, one connection
// each, in the order of its result. ECDSA curves are separate entries because a
// server may hold one key per curve; an RSA key is asked for with SHA-2 signatures
// only.
var scanFamilies = [][]string{
	{ssh.KeyAlgoED25519},
	{ssh.KeyAlgoECDSA256},
	{ssh.KeyAlgoECDSA384},
	{ssh.KeyAlgoECDSA521},
	{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256},
}

// errScanned aborts a scan's handshake once the host key is captured: the key
// exchange never completes, so no authentication request is ever sent.
var errScanned = errors.New("sshdial: host key captured")

// ScanHostKeys collects the host keys an SSH server presents, the way ssh-keyscan
// does: it connects once per host-key algorithm family (ed25519, ECDSA P-256,
// P-384, P-521, RSA with SHA-2), each time offering only that family, captures the
// key the server proves during the key exchange and aborts the handshake before
// authentication. No user name is ever sent and no credential is used.
//
// The keys are returned once each in a stable order: ed25519, ECDSA, RSA. timeout
// bounds each connection (DefaultTimeout if zero or negative); a deadline on ctx
// applies too. A host that cannot be reached yields an error wrapping ErrUnreachable;
// a server offering none of the families one wrapping ErrHandshake.
//
// The keys are whatever answers at address: pinning them is only safe when the
// network path is trusted or their fingerprints are checked out of band.
func ScanHostKeys(ctx context.Context, address string, port int, timeout time.Duration) ([]ssh.PublicKey, error) {
	if port == 0 {
		port = 22
	}
	if address == "" || port < 1 || port > 65535 {
		return nil, fmt.Errorf("scan host keys: invalid address %q port %d", address, port)
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	addr := net.JoinHostPort(address, strconv.Itoa(port))

	var (
		keys    []ssh.PublicKey
		offered []string // the server's host-key algorithms, once a negotiation failure told us
		lastErr error
	)
	for _, family := range scanFamilies {
		if offered != nil && !slices.ContainsFunc(family, func(a string) bool { return slices.Contains(offered, a) }) {
			continue // the server does not have this kind of key
		}
		key, err := scanOne(ctx, addr, family, timeout)
		var negotiation *ssh.AlgorithmNegotiationError
		switch {
		case err == nil:
			if !slices.ContainsFunc(keys, func(k ssh.PublicKey) bool { return bytes.Equal(k.Marshal(), key.Marshal()) }) {
				keys = append(keys, key)
			}
		case errors.As(err, &negotiation) && negotiation.What == "host key":
			offered = negotiation.RequestedAlgorithms
		case errors.Is(err, ErrUnreachable) || ctx.Err() != nil:
			return nil, err // no point trying the other families
		default:
			lastErr = err
		}
	}
	if len(keys) == 0 {
		if lastErr != nil {
			return nil, lastErr
		}
		return nil, &Error{Host: address, Kind: ErrHandshake,
			Err: fmt.Errorf("scan %s: the server offers no supported host key type (it offers %q)", addr, offered)}
	}
	return keys, nil
}

// scanOne runs one key exchange offering only algos and returns the host key.
func scanOne(ctx context.Context, addr string, algos []string, timeout time.Duration) (ssh.PublicKey, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("scan %s: %w", addr, ctx.Err())
		}
		return nil, &Error{Host: addr, Kind: ErrUnreachable, Err: fmt.Errorf("scan %s: cannot reach it: %w", addr, err)}
	}
	defer conn.Close()
	if dl, ok := dctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(dctx, func() { conn.Close() })
	defer stop()

	var captured ssh.PublicKey
	config := &ssh.ClientConfig{
		// The user name travels only in an authentication request, which is never
		// sent: the callback below aborts the handshake first. No auth methods.
		User:              "ferry-keyscan",
		HostKeyAlgorithms: algos,
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			captured = key
			return errScanned
		},
	}
	sshConn, _, _, err := ssh.NewClientConn(conn, addr, config)
	if err == nil { // cannot happen: the callback always fails
		sshConn.Close()
		return nil, &Error{Host: addr, Kind: ErrHandshake, Err: fmt.Errorf("scan %s: handshake was not aborted", addr)}
	}
	if captured != nil {
		return captured, nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("scan %s: %w", addr, ctx.Err())
	}
	var netErr net.Error
	switch {
	case dctx.Err() != nil || (errors.As(err, &netErr) && netErr.Timeout()):
		return nil, &Error{Host: addr, Kind: ErrUnreachable, Err: fmt.Errorf("scan %s: handshake timed out after %s: %w", addr, timeout, err)}
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		return nil, &Error{Host: addr, Kind: ErrUnreachable, Err: fmt.Errorf("scan %s: closed the connection during the handshake: %w", addr, err)}
	}
	// Also an *ssh.AlgorithmNegotiationError when the server lacks the family.
	return nil, &Error{Host: addr, Kind: ErrHandshake, Err: fmt.Errorf("scan %s: %w", addr, err)}
}

// KnownHostKeys returns the plain host keys that OpenSSH known_hosts files list for
// address and port (hashed entries and patterns included; @cert-authority and
// @revoked entries are not keys to pin), one per key type, ed25519 first. No entry
// gives no keys and no error.
func KnownHostKeys(files []string, address string, port int) ([]ssh.PublicKey, error) {
	if port == 0 {
		port = 22
	}
	known, err := knownhosts.New(files...)
	if err != nil {
		return nil, fmt.Errorf("known_hosts: %w", err)
	}
	// A key no file can contain makes the KeyError list every key known for address.
	var keyErr *knownhosts.KeyError
	if err := known(net.JoinHostPort(address, strconv.Itoa(port)), dummyAddr, probeKey); !errors.As(err, &keyErr) {
		return nil, nil
	}
	keys := make([]ssh.PublicKey, 0, len(keyErr.Want))
	for _, k := range keyErr.Want {
		keys = append(keys, k.Key)
	}
	rank := func(k ssh.PublicKey) int {
		if i := slices.Index(hostKeyPreference, k.Type()); i >= 0 {
			return i
		}
		if k.Type() == ssh.KeyAlgoRSA {
			return len(hostKeyPreference) - 2
		}
		return len(hostKeyPreference)
	}
	slices.SortStableFunc(keys, func(a, b ssh.PublicKey) int {
		if c := rank(a) - rank(b); c != 0 {
			return c
		}
		return bytes.Compare(a.Marshal(), b.Marshal())
	})
	return keys, nil
}
