package bus

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures an in-process NATS server with JetStream.
type EmbeddedConfig struct {
	// StoreDir keeps JetStream data. Required.
	StoreDir string
	// Host and Port to listen on for other processes (the CLI). Port -1 picks a free
	// port; DontListen serves only in-process connections.
	Host       string
	Port       int
	DontListen bool
	// SyncAlways fsyncs every write: an acknowledged message survives power loss.
	SyncAlways bool
}

// StartEmbedded starts a NATS server with JetStream in this process and waits until it
// accepts connections. Stop it with Shutdown and WaitForShutdown.
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	opts := &server.Options{
		ServerName: "ferry-embedded",
		Host:       cfg.Host,
		Port:       cfg.Port,
		DontListen: cfg.DontListen,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 1 << 20,
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if cfg.SyncAlways {
		opts.SyncAlways = true
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded NATS server did not become ready (store %s)", cfg.StoreDir)
	}
	return s, nil
}
