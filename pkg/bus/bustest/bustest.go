// Package bustest starts a real NATS server with JetStream inside a test.
package bustest

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is an embedded NATS server with JetStream, provisioned for ferry.
type Server struct {
	*server.Server
	URL  string
	dir  string
	port int
}

// Start starts a server on a free loopback port with its store in t.TempDir(),
// provisions ferry's streams and buckets with topo, and stops it in t.Cleanup.
func Start(t testing.TB, topo bus.Topology) *Server {
	t.Helper()
	dir := t.TempDir()
	s, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: dir, Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Server: s, URL: s.ClientURL(), dir: dir, port: s.Addr().(*net.TCPAddr).Port}
	t.Cleanup(srv.stop)
	nc, js := srv.Connect(t, "provision")
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	return srv
}

func (s *Server) stop() {
	s.Shutdown()
	s.WaitForShutdown()
}

// Restart stops the server and starts it again on the same port and store: what was
// acknowledged must still be there.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.stop()
	ns, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: s.dir, Port: s.port})
	if err != nil {
		t.Fatal(err)
	}
	s.Server = ns
}

// Connect opens a client connection closed in t.Cleanup.
func (s *Server) Connect(t testing.TB, name string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(s.URL, nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}
