package sshdial

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Sentinel errors classify what went wrong. Test with errors.Is; the errors returned
// by this package wrap exactly one of them (credential errors wrap ErrCredential and,
// for a wrong passphrase, also ErrPassphrase).
var (
	// ErrCredential: the credential reference or its secret files are unusable.
	ErrCredential = errors.New("unusable credential")
	// ErrPassphrase: the private key passphrase is wrong or missing.
	ErrPassphrase = errors.New("private key passphrase is wrong")
	// ErrAuthFailed: the server rejected every authentication method offered.
	ErrAuthFailed = errors.New("ssh authentication failed")
	// ErrHostKeyUnknown: no key is pinned for the host and trust-on-first-use is off.
	ErrHostKeyUnknown = errors.New("unknown host key")
	// ErrHostKeyChanged: the host presented a key that matches none of its pins.
	ErrHostKeyChanged = errors.New("host key changed")
	// ErrHostKeyRevoked: the host presented a key marked @revoked in a known_hosts file.
	ErrHostKeyRevoked = errors.New("host key revoked")
	// ErrUnreachable: the host could not be reached or the handshake timed out (retryable).
	ErrUnreachable = errors.New("ssh host unreachable")
	// ErrPeerUnresponsive: an established connection stopped answering keepalives (retryable).
	ErrPeerUnresponsive = errors.New("ssh peer stopped answering")
	// ErrConnectionLost: an established connection was closed by the peer or the network (retryable).
	ErrConnectionLost = errors.New("ssh connection lost")
	// ErrHandshake: the SSH handshake failed for another reason (e.g. no common algorithm).
	ErrHandshake = errors.New("ssh handshake failed")
	// ErrClosed: the Client, Tunnel or Pool was closed by its owner.
	ErrClosed = errors.New("closed")
)

// Retryable reports whether err is a transient network condition worth retrying
// (unreachable host, timeout, dead or lost connection). Authentication, host-key and
// credential errors are not retryable.
func Retryable(err error) bool {
	return errors.Is(err, ErrUnreachable) || errors.Is(err, ErrPeerUnresponsive) ||
		errors.Is(err, ErrConnectionLost)
}

// Error is the error type Dial and Client return for connection failures. Kind is
// one of the sentinel errors above; Err carries the detail and its message, which
// always names the host. Error messages never contain secret material.
type Error struct {
	Host string // inventory name of the host
	Kind error  // sentinel, e.g. ErrAuthFailed
	Err  error  // detail
}

func (e *Error) Error() string { return e.Err.Error() }

// Unwrap exposes both the Kind sentinel and the detail to errors.Is / errors.As.
func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

// CredentialError reports an unusable credential reference or secret file.
// Its message names the reference and the file, never a secret.
type CredentialError struct {
	Ref  string // credential reference
	Msg  string // what is wrong
	kind error  // ErrPassphrase or nil
}

func (e *CredentialError) Error() string { return fmt.Sprintf("credential %q: %s", e.Ref, e.Msg) }

// Unwrap returns ErrCredential and, for passphrase problems, ErrPassphrase.
func (e *CredentialError) Unwrap() []error {
	if e.kind != nil {
		return []error{ErrCredential, e.kind}
	}
	return []error{ErrCredential}
}

// UnknownHostKeyError is returned when a host has no pinned key, trust-on-first-use
// is off, and the key it presented is therefore not trusted.
type UnknownHostKeyError struct {
	Host    string        // inventory name
	Address string        // host:port dialled
	Key     ssh.PublicKey // the key the host presented
}

func (e *UnknownHostKeyError) Error() string {
	return fmt.Sprintf("unknown host key for %s (fingerprint %s); pin it with `ferry host trust %s`",
		e.Host, ssh.FingerprintSHA256(e.Key), e.Host)
}

// Is makes errors.Is(err, ErrHostKeyUnknown) true.
func (e *UnknownHostKeyError) Is(target error) bool { return target == ErrHostKeyUnknown }

// HostKeyChangedError is returned when a host presents a key that matches none of
// its pinned keys: the host was reinstalled, or someone is in the middle.
type HostKeyChangedError struct {
	Host     string        // inventory name
	Address  string        // host:port dialled
	Key      ssh.PublicKey // the key the host presented
	Expected []string      // SHA256 fingerprints of the pinned keys
}

func (e *HostKeyChangedError) Error() string {
	return fmt.Sprintf("host key changed for %s (%s): it presented %s %s, expected %s; "+
		"this may be a man-in-the-middle attack — if the host was reinstalled, re-pin it with `ferry host trust %s`",
		e.Host, e.Address, e.Key.Type(), ssh.FingerprintSHA256(e.Key), strings.Join(e.Expected, " or "), e.Host)
}

// Is makes errors.Is(err, ErrHostKeyChanged) true.
func (e *HostKeyChangedError) Is(target error) bool { return target == ErrHostKeyChanged }

// HostKeyRevokedError is returned when the presented key is marked @revoked in a
// known_hosts file.
type HostKeyRevokedError struct {
	Host    string
	Address string
	Key     ssh.PublicKey
	Source  string // file:line of the @revoked entry
}

func (e *HostKeyRevokedError) Error() string {
	return fmt.Sprintf("host key %s of %s (%s) is revoked by %s",
		ssh.FingerprintSHA256(e.Key), e.Host, e.Address, e.Source)
}

// Is makes errors.Is(err, ErrHostKeyRevoked) true.
func (e *HostKeyRevokedError) Is(target error) bool { return target == ErrHostKeyRevoked }
