package sshdial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Tunnel is a local TCP listener whose connections are forwarded over the SSH
// connection to a remote address (like ssh -L).
type Tunnel struct {
	client *Client
	ln     net.Listener
	remote string
	ctx    context.Context // cancelled by Close; bounds the remote dials
	cancel context.CancelFunc

	wg        sync.WaitGroup
	closeOnce sync.Once
	mu        sync.Mutex
	conns     map[net.Conn]struct{} // both ends of every active bridge
	active    int                   // active bridged connections
}

// Forward listens on listenAddr (e.g. "127.0.0.1:0") and bridges every accepted
// connection to remoteAddr, dialled from the remote host over the SSH connection
// (direct-tcpip). Each direction is copied until EOF and then half-closed. The
// tunnel runs until Close, until ctx is cancelled, or until the Client ends.
func (c *Client) Forward(ctx context.Context, listenAddr, remoteAddr string) (*Tunnel, error) {
	if err := c.Err(); err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", listenAddr)
	if err != nil {
		return nil, fmt.Errorf("ssh %s: tunnel to %s: %w", c.info.Host, remoteAddr, err)
	}
	t := &Tunnel{client: c, ln: ln, remote: remoteAddr, conns: map[net.Conn]struct{}{}}
	t.ctx, t.cancel = context.WithCancel(context.WithoutCancel(ctx))
	c.hooks.tunnels(+1)
	t.wg.Add(1)
	go t.serve()
	go func() {
		select {
		case <-ctx.Done():
			t.Close()
		case <-c.done:
			t.Close()
		case <-t.ctx.Done():
		}
	}()
	c.log.Debug("ssh tunnel open", "listen", ln.Addr().String(), "remote", remoteAddr)
	return t, nil
}

// Addr returns the local listening address.
func (t *Tunnel) Addr() net.Addr { return t.ln.Addr() }

// Done is closed when the tunnel has closed (Close, its context, or its client ending).
func (t *Tunnel) Done() <-chan struct{} { return t.ctx.Done() }

// ActiveConns returns the number of connections currently bridged.
func (t *Tunnel) ActiveConns() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.active
}

// Close stops the listener, closes every bridged connection and waits for the
// bridges to finish.
func (t *Tunnel) Close() error {
	t.closeOnce.Do(func() {
		t.cancel()
		t.ln.Close()
		t.mu.Lock()
		for conn := range t.conns {
			conn.Close()
		}
		t.mu.Unlock()
		t.wg.Wait()
		t.client.hooks.tunnels(-1)
		t.client.log.Debug("ssh tunnel closed", "listen", t.ln.Addr().String(), "remote", t.remote)
	})
	return nil
}

func (t *Tunnel) serve() {
	defer t.wg.Done()
	for {
		local, err := t.ln.Accept()
		if err != nil {
			if t.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			t.client.log.Warn("ssh tunnel accept", "error", err)
			time.Sleep(100 * time.Millisecond) // e.g. out of file descriptors
			continue
		}
		if !t.track(local) {
			local.Close()
			return
		}
		t.wg.Add(1)
		go t.bridge(local)
	}
}

// track registers conn; it reports false once the tunnel is closing.
func (t *Tunnel) track(conn net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ctx.Err() != nil {
		return false
	}
	t.conns[conn] = struct{}{}
	return true
}

func (t *Tunnel) untrack(conns ...net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, conn := range conns {
		delete(t.conns, conn)
		conn.Close()
	}
}

func (t *Tunnel) bridge(local net.Conn) {
	defer t.wg.Done()
	remote, err := t.client.DialContext(t.ctx, "tcp", t.remote)
	if err != nil {
		t.untrack(local)
		if t.ctx.Err() == nil {
			t.client.log.Warn("ssh tunnel dial", "remote", t.remote, "error", err)
		}
		return
	}
	if !t.track(remote) {
		t.untrack(local, remote)
		return
	}
	t.mu.Lock()
	t.active++
	t.mu.Unlock()

	done := make(chan struct{})
	go func() {
		pipe(remote, local)
		close(done)
	}()
	pipe(local, remote)
	<-done

	t.mu.Lock()
	t.active--
	t.mu.Unlock()
	t.untrack(local, remote)
}

// pipe copies src to dst, then half-closes dst. On an error (not EOF) it closes
// both so that the opposite direction stops too.
func pipe(dst, src net.Conn) {
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		src.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
}
