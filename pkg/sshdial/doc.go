// Package sshdial is the SSH client layer of ferry's services.
//
// Dial connects to an inventory host (contracts.Host): it resolves the host's
// credential reference below a secrets directory (LoadCredential), verifies the
// host key during the key exchange against the pinned keys and known_hosts files
// (strict by default, trust-on-first-use when the host allows it), authenticates
// with publickey (ssh-agent, private key), keyboard-interactive and password, in
// that order, and watches the connection with keepalives.
//
// Errors wrap sentinels (ErrAuthFailed, ErrHostKeyChanged, ErrUnreachable, ...)
// so that callers can classify them; Retryable tells transient network failures
// apart. No error message or log line contains secret material.
//
// Client.Forward opens local tunnels over a connection, and Pool keeps one Client
// per session lease.
package sshdial
