package sshdial_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

func TestTunnelCarriesDataBothWays(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	echo := sshtest.EchoServer(t)
	var tunnels atomic.Int64
	opts := e.options()
	opts.Hooks.TunnelsActive = func(d int) { tunnels.Add(int64(d)) }
	c, err := e.dialHost(t, e.srv.Host("web1", e.credential(t, "pw", map[string]string{"password": e.srv.User().Password})), opts)
	if err != nil {
		t.Fatal(err)
	}
	tun, err := c.Forward(context.Background(), "127.0.0.1:0", echo)
	if err != nil {
		t.Fatal(err)
	}
	if tunnels.Load() != 1 {
		t.Errorf("tunnels active = %d, want 1", tunnels.Load())
	}

	// A payload large enough to need both directions flowing at once; the
	// half-close after writing must come back as EOF after the echo.
	payload := make([]byte, 4<<20)
	rand.Read(payload)
	conn, err := net.Dial("tcp", tun.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go func() {
		conn.Write(payload)
		conn.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(conn)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo through tunnel: %d of %d bytes, err %v", len(got), len(payload), err)
	}

	// A second connection stays open across Close and is cut by it.
	open, err := net.Dial("tcp", tun.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	open.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(open, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("ping: %q %v", buf, err)
	}
	if n := tun.ActiveConns(); n != 1 {
		t.Errorf("ActiveConns = %d, want 1", n)
	}

	tun.Close()
	open.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := open.Read(buf); err == nil {
		t.Error("bridged connection still open after Close")
	}
	if c, err := net.DialTimeout("tcp", tun.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("tunnel port still accepts after Close")
	}
	if tunnels.Load() != 0 {
		t.Errorf("tunnels active = %d after Close, want 0", tunnels.Load())
	}
}

func TestTunnelClosesWithClient(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	c := e.mustDial(t, e.credential(t, "pw", map[string]string{"password": e.srv.User().Password}))
	tun, err := c.Forward(context.Background(), "127.0.0.1:0", sshtest.EchoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", tun.Addr().String(), time.Second)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("tunnel still listening after its client closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := c.Forward(context.Background(), "127.0.0.1:0", "127.0.0.1:1"); !errors.Is(err, sshdial.ErrClosed) {
		t.Errorf("Forward on a closed client: %v, want ErrClosed", err)
	}
}
