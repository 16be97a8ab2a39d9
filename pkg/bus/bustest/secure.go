package bustest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/natsconf"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Secure is a NATS server started from ferry's generated, secured configuration
// (pkg/bus/natsconf, the files of deployments/nats/): TLS on the client port with a
// CA made for the test, one user per service with its permissions, passwords from
// the environment. It logs every permission violation it sees.
type Secure struct {
	*server.Server
	URL string
	// CAFile is the test CA's certificate (FERRY_NATS_CA).
	CAFile string
	// Passwords by user name.
	Passwords map[string]string
	log       *violationLog
}

// SecureCluster is the three-node variant: one Secure per node, routed with mutual TLS.
type SecureCluster struct {
	Nodes []*Secure
	// URL lists every node's client URL, comma-separated (FERRY_NATS_URL).
	URL string
}

// StartSecure starts the single-node configuration (nats.conf) on free loopback ports,
// its store in t.TempDir(), and stops it in t.Cleanup. It does not provision: that
// is the orchestrator user's job. It sets the password variables with t.Setenv, so
// the test must not be parallel.
func StartSecure(t testing.TB) *Secure {
	t.Helper()
	dir, ca, pws := SecureFiles(t)
	opts := processConfig(t, filepath.Join(dir, natsconf.SingleNodeFile))
	s := startSecure(t, opts, dir, "store")
	s.CAFile, s.Passwords = ca, pws
	return s
}

// StartSecureCluster starts the three-node configuration (nats-N.conf), each node on
// free loopback ports, with the routes pointed at them, and waits until JetStream has
// a meta leader.
func StartSecureCluster(t testing.TB) *SecureCluster {
	t.Helper()
	dir, ca, pws := SecureFiles(t)
	ports := make([]int, len(natsconf.ClusterNodes))
	var routes []*url.URL
	for i := range ports {
		ports[i] = freePort(t)
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", ports[i])})
	}
	c := &SecureCluster{}
	var urls []string
	for i, node := range natsconf.ClusterNodes {
		opts := processConfig(t, filepath.Join(dir, natsconf.ClusterNodeFile(node)))
		if len(opts.Routes) != len(natsconf.ClusterNodes) || opts.Cluster.Name != natsconf.ClusterName || opts.Cluster.TLSConfig == nil {
			t.Fatalf("%s: cluster block not as expected: routes %v, name %q, tls %v", node, opts.Routes, opts.Cluster.Name, opts.Cluster.TLSConfig != nil)
		}
		opts.Cluster.Host, opts.Cluster.Port, opts.Routes = "127.0.0.1", ports[i], routes
		s := startSecure(t, opts, dir, "store-"+node)
		s.CAFile, s.Passwords = ca, pws
		c.Nodes = append(c.Nodes, s)
		urls = append(urls, s.URL)
	}
	c.URL = strings.Join(urls, ",")
	deadline := time.Now().Add(30 * time.Second)
	for !c.ready() {
		if time.Now().After(deadline) {
			t.Fatal("the three-node cluster did not form")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

// ready reports whether JetStream has a meta leader that every node follows.
func (c *SecureCluster) ready() bool {
	leader := false
	for _, s := range c.Nodes {
		if !s.JetStreamIsCurrent() {
			return false
		}
		leader = leader || s.JetStreamIsLeader()
	}
	return leader
}

// Violations returns the permission violations the cluster's nodes logged.
func (c *SecureCluster) Violations() []string {
	var v []string
	for _, s := range c.Nodes {
		v = append(v, s.Violations()...)
	}
	return v
}

// Config returns how user reaches the cluster, like Secure.Config.
func (c *SecureCluster) Config(t testing.TB, user string) bus.Config {
	cfg := c.Nodes[0].Config(t, user)
	cfg.URL = c.URL
	return cfg
}

// SecureFiles writes the test's TLS material (tls/) and the generated configuration
// (natsconf.Files) into a temporary directory, the configuration's TLS paths pointed at
// it, and sets a random password for every user in the environment the configuration
// reads (t.Setenv). It returns the directory, the CA file and the passwords by user.
func SecureFiles(t testing.TB) (dir, caFile string, passwords map[string]string) {
	t.Helper()
	dir = t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	if err := os.Mkdir(tlsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeTestPKI(t, tlsDir)
	for _, f := range natsconf.Files() {
		content := f.Content
		if strings.Contains(content, natsconf.TLSDir+"/") {
			content = strings.ReplaceAll(content, natsconf.TLSDir+"/", tlsDir+"/")
		}
		if err := os.WriteFile(filepath.Join(dir, f.Name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	passwords = map[string]string{}
	for _, u := range natsconf.Users() {
		pw := randomPassword(t)
		t.Setenv(u.PasswordEnv(), pw)
		passwords[u.Name] = pw
	}
	return dir, filepath.Join(tlsDir, "ca.pem"), passwords
}

func processConfig(t testing.TB, file string) *server.Options {
	t.Helper()
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		t.Fatalf("%s: %v", filepath.Base(file), err)
	}
	if !opts.JetStream || opts.TLSConfig == nil || !opts.TLSHandshakeFirst || len(opts.Users) == 0 {
		t.Fatalf("%s: want JetStream, TLS (handshake first) and users; got jetstream %v, tls %v, users %d",
			filepath.Base(file), opts.JetStream, opts.TLSConfig != nil, len(opts.Users))
	}
	return opts
}

func startSecure(t testing.TB, opts *server.Options, dir, store string) *Secure {
	t.Helper()
	opts.Host, opts.Port = "127.0.0.1", -1
	opts.HTTPHost, opts.HTTPPort = "127.0.0.1", -1
	opts.StoreDir = filepath.Join(dir, store)
	opts.NoSigs, opts.NoLog = true, false
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	log := &violationLog{}
	s.SetLoggerV2(log, false, false, false)
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		s.Shutdown()
		t.Fatalf("secured NATS server %s did not start", opts.ServerName)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return &Secure{Server: s, URL: fmt.Sprintf("tls://127.0.0.1:%d", s.Addr().(*net.TCPAddr).Port), log: log}
}

// Config returns how user reaches the server: its password, the test CA, a short
// connect timeout. bus.Connect derives the user's inbox prefix.
func (s *Secure) Config(t testing.TB, user string) bus.Config {
	t.Helper()
	pw, ok := s.Passwords[user]
	if !ok {
		t.Fatalf("no NATS user %q", user)
	}
	return bus.Config{URL: s.URL, Name: "test-" + user, User: user, Password: pw, CAFile: s.CAFile, ConnectTimeout: 10 * time.Second}
}

// Connect connects as user over TLS (closed in t.Cleanup) and returns the connection
// and a channel of the asynchronous errors it gets (permission violations).
func (s *Secure) Connect(t testing.TB, user string) (*nats.Conn, <-chan error) {
	t.Helper()
	return ConnectAs(t, s.Config(t, user))
}

// ConnectAs connects with cfg like bus.Connect (closed in t.Cleanup), and returns the
// connection's asynchronous errors on a channel.
func ConnectAs(t testing.TB, cfg bus.Config) (*nats.Conn, <-chan error) {
	t.Helper()
	nc, err := bus.Connect(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("connecting as %s: %v", cfg.User, err)
	}
	errs := make(chan error, 64)
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	})
	t.Cleanup(nc.Close)
	return nc, errs
}

// Violations returns the permission violations the server logged so far.
func (s *Secure) Violations() []string { return s.log.violations() }

// violationLog is the server's logger: it keeps the lines about permission violations.
type violationLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *violationLog) record(format string, v ...any) {
	line := fmt.Sprintf(format, v...)
	if strings.Contains(line, "Violation") {
		l.mu.Lock()
		l.lines = append(l.lines, line)
		l.mu.Unlock()
	}
}

func (l *violationLog) violations() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

func (l *violationLog) Noticef(format string, v ...any) {}
func (l *violationLog) Warnf(format string, v ...any)   { l.record(format, v...) }
func (l *violationLog) Fatalf(format string, v ...any)  { l.record(format, v...) }
func (l *violationLog) Errorf(format string, v ...any)  { l.record(format, v...) }
func (l *violationLog) Debugf(format string, v ...any)  {}
func (l *violationLog) Tracef(format string, v ...any)  {}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// randomPassword is 32 letters and digits starting with a letter, as make certs makes
// them: the server reads it through its configuration parser, which would take a
// leading digit for a number.
func randomPassword(t testing.TB) string {
	t.Helper()
	const letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	const alnum = letters + "0123456789"
	b := make([]byte, 32)
	for i := range b {
		set := alnum
		if i == 0 {
			set = letters
		}
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(set))))
		if err != nil {
			t.Fatal(err)
		}
		b[i] = set[n.Int64()]
	}
	return string(b)
}

// writeTestPKI writes ca.pem, server.pem and server-key.pem into dir: a CA and a
// server certificate for the names make certs gives (nats, nats-1..3, localhost,
// 127.0.0.1), usable for clients and routes alike.
func writeTestPKI(t testing.TB, dir string) {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ferry test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    append([]string{natsconf.SingleNodeName, "localhost"}, natsconf.ClusterNodes...),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{
		"ca.pem":         {Type: "CERTIFICATE", Bytes: caDER},
		"server.pem":     {Type: "CERTIFICATE", Bytes: der},
		"server-key.pem": {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
