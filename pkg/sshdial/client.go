package sshdial

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Client is an authenticated SSH connection to one host. It watches the peer with
// keepalives; once the connection ends, every operation fails with the reason
// (see Err).
type Client struct {
	ssh   *ssh.Client
	info  ConnInfo
	hooks Hooks
	log   *slog.Logger
	done  chan struct{} // closed when the connection has ended

	mu      sync.Mutex
	cause   error // why the connection ended, if not by Close
	closing bool
}

func newClient(sc *ssh.Client, info ConnInfo, ka Keepalive, hooks Hooks, log *slog.Logger) *Client {
	c := &Client{ssh: sc, info: info, hooks: hooks, log: log, done: make(chan struct{})}
	hooks.sessions(+1)
	go c.watch()
	if ka.Interval >= 0 {
		if ka.Interval == 0 {
			ka.Interval = DefaultKeepaliveInterval
		}
		if ka.CountMax <= 0 {
			ka.CountMax = DefaultKeepaliveCountMax
		}
		go c.keepalive(ka)
	}
	return c
}

// watch waits for the connection to end and records why.
func (c *Client) watch() {
	err := c.ssh.Wait()
	c.mu.Lock()
	if c.cause == nil && !c.closing {
		c.cause = &Error{Host: c.info.Host, Kind: ErrConnectionLost,
			Err: fmt.Errorf("ssh connection to %s (%s) lost: %v", c.info.Host, c.info.Address, err)}
	}
	cause := c.cause
	c.mu.Unlock()
	// Counted out before done is closed: whoever waited for the end (Close, Wait, Done)
	// finds the session gauge already down.
	c.hooks.sessions(-1)
	if cause != nil {
		c.log.Warn("ssh connection ended", "error", cause)
	} else {
		c.log.Debug("ssh connection closed")
	}
	close(c.done)
}

// keepalive sends keepalive@openssh.com every Interval, one at a time, and closes
// the connection when CountMax intervals in a row pass without a reply.
func (c *Client) keepalive(ka Keepalive) {
	ticker := time.NewTicker(ka.Interval)
	defer ticker.Stop()
	replies := make(chan error, 1)
	pending, misses := false, 0
	for {
		select {
		case <-c.done:
			return
		case err := <-replies:
			pending = false
			if err == nil {
				misses = 0
			}
		case <-ticker.C:
			if !pending {
				pending = true
				go func() {
					// OpenSSH answers with a failure message; any answer proves liveness.
					_, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil)
					replies <- err
				}()
				continue
			}
			if misses++; misses >= ka.CountMax {
				c.fail(&Error{Host: c.info.Host, Kind: ErrPeerUnresponsive, Err: fmt.Errorf(
					"ssh peer %s (%s) stopped answering: no keepalive reply for %s",
					c.info.Host, c.info.Address, time.Duration(misses)*ka.Interval)})
				return
			}
		}
	}
}

// fail closes the connection, recording cause as the reason.
func (c *Client) fail(cause error) {
	c.mu.Lock()
	if c.cause == nil && !c.closing {
		c.cause = cause
	}
	c.mu.Unlock()
	c.ssh.Close()
}

// Info describes the connection: verified host key, auth method, handshake time.
func (c *Client) Info() ConnInfo { return c.info }

// SSH returns the underlying x/crypto client, for operations Client does not wrap.
func (c *Client) SSH() *ssh.Client { return c.ssh }

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns nil while the connection is up. Afterwards it returns why it ended:
// ErrClosed after Close, otherwise an *Error wrapping ErrPeerUnresponsive or
// ErrConnectionLost (both retryable).
func (c *Client) Err() error {
	select {
	case <-c.done:
	default:
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cause != nil {
		return c.cause
	}
	return fmt.Errorf("ssh connection to %s: %w", c.info.Host, ErrClosed)
}

// Wait blocks until the connection ends. It returns nil if it ended by Close,
// otherwise the reason (see Err).
func (c *Client) Wait() error {
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cause
}

// Close closes the connection and waits until it has ended. Tunnels opened on the
// Client close with it.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.ssh.Close()
	<-c.done
	return nil
}

// opErr returns the reason the connection ended if it has, otherwise err wrapped
// with the operation and host.
func (c *Client) opErr(op string, err error) error {
	if cerr := c.Err(); cerr != nil {
		return cerr
	}
	return fmt.Errorf("ssh %s: %s: %w", c.info.Host, op, err)
}

// NewSession opens a session channel (to run a command or a subsystem).
func (c *Client) NewSession() (*ssh.Session, error) {
	if err := c.Err(); err != nil {
		return nil, err
	}
	s, err := c.ssh.NewSession()
	if err != nil {
		return nil, c.opErr("open session", err)
	}
	return s, nil
}

// DialContext opens a TCP connection to addr from the remote host (direct-tcpip).
func (c *Client) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := c.Err(); err != nil {
		return nil, err
	}
	conn, err := c.ssh.DialContext(ctx, network, addr)
	if err != nil {
		return nil, c.opErr("dial "+addr, err)
	}
	return conn, nil
}
