// Package bus connects ferry's services to NATS JetStream: connection with reconnect,
// idempotent provisioning of streams, consumers and buckets, publishing with message
// ids, and an embedded server for the all-in-one mode and tests.
package bus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Config says how to reach NATS. Password and credentials are secrets: LogValue masks them.
type Config struct {
	URL      string // nats://host:4222, comma-separated for a cluster
	Name     string // connection name shown by the server
	User     string
	Password string
	Creds    string // path to a .creds file
	CAFile   string // CA of the server's TLS certificate
	CertFile string // client certificate (mutual TLS)
	KeyFile  string
	// InboxPrefix is the prefix of this connection's reply subjects. Empty: the user's
	// own prefix, InboxPrefix(User), when a user is set (the secured server lets each
	// user subscribe only to its own inbox), else NATS's default _INBOX.
	InboxPrefix string
	// ConnectTimeout bounds the first connection (default 10 s; the connection then
	// reconnects forever).
	ConnectTimeout time.Duration
	// InProcess connects to an embedded server without a socket.
	InProcess nats.InProcessConnProvider
}

// LogValue keeps secrets out of logs.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("url", c.URL), slog.String("name", c.Name), slog.String("user", c.User),
		slog.Bool("password_set", c.Password != ""), slog.String("creds", c.Creds),
		slog.String("ca", c.CAFile), slog.Bool("in_process", c.InProcess != nil))
}

// InboxPrefix is the reply-subject prefix of a NATS user: _INBOX_<user>. The secured
// server configuration (pkg/bus/natsconf) allows a user to subscribe only below its
// own prefix, so no user can read the replies (KV reads, API answers) of another.
func InboxPrefix(user string) string { return "_INBOX_" + user }

// Connect dials NATS, retrying until ctx ends or ConnectTimeout passes, and then keeps
// reconnecting forever. Connection state changes are logged.
func Connect(ctx context.Context, cfg Config, log *slog.Logger) (*nats.Conn, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(false),
		nats.PingInterval(10 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: closed on purpose
				log.Warn("nats disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Error("nats async error", "subject", subj, "error", err)
		}),
	}
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	}
	if p := cfg.InboxPrefix; p != "" {
		opts = append(opts, nats.CustomInboxPrefix(p))
	} else if cfg.User != "" && !strings.ContainsAny(cfg.User, " \t\r\n.*>") {
		opts = append(opts, nats.CustomInboxPrefix(InboxPrefix(cfg.User)))
	}
	if cfg.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.CAFile), nats.TLSHandshakeFirst())
		opts = append(opts, nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12}))
	}
	if cfg.CertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.CertFile, cfg.KeyFile))
	}
	if cfg.InProcess != nil {
		opts = append(opts, nats.InProcessServer(cfg.InProcess))
	}
	url := cfg.URL
	if url == "" {
		url = nats.DefaultURL
	}
	timeout := cfg.ConnectTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var lastErr error
	for {
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			return nc, nil
		}
		lastErr = err
		if errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) {
			return nil, fmt.Errorf("connecting to NATS at %s as %q: %w", redact(url), cfg.User, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connecting to NATS at %s: %w", redact(url), lastErr)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// redact drops user info from a URL for messages.
func redact(url string) string {
	for i := 0; i+3 < len(url); i++ {
		if url[i:i+3] == "://" {
			rest := url[i+3:]
			for j := 0; j < len(rest); j++ {
				if rest[j] == '@' {
					return url[:i+3] + "***@" + rest[j+1:]
				}
				if rest[j] == '/' {
					break
				}
			}
		}
	}
	return url
}
