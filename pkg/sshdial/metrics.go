package sshdial

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the SSH client metrics of a service. Pass Metrics.Hooks() in
// Options.Hooks of every Dial.
type Metrics struct {
	connections     *prometheus.CounterVec
	handshake       prometheus.Histogram
	hostKeyFailures *prometheus.CounterVec
	sessions        prometheus.Gauge
	tunnels         prometheus.Gauge
}

// NewMetrics registers the SSH metrics on reg (never the global registry):
// ferry_ssh_connections_total{host,method,outcome}, ferry_ssh_handshake_duration_seconds,
// ferry_ssh_host_key_failures_total{host,kind}, ferry_ssh_sessions_active and
// ferry_ssh_tunnels_active. host is the inventory name: one series per host the
// service dialled.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_ssh_connections_total",
			Help: "SSH connection attempts (dial and handshake) by host, authentication method and outcome (ok, auth_failed, host_key_unknown, host_key_changed, host_key_revoked, timeout, unreachable, credential, handshake, canceled, invalid_host).",
		}, []string{"host", "method", "outcome"}),
		handshake: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ferry_ssh_handshake_duration_seconds",
			Help:    "Time from TCP connect to authenticated SSH connection.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30},
		}),
		hostKeyFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_ssh_host_key_failures_total",
			Help: "Host keys refused, by host and kind (unknown, changed, revoked). A changed key may be an attack.",
		}, []string{"host", "kind"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_ssh_sessions_active",
			Help: "Open SSH connections.",
		}),
		tunnels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_ssh_tunnels_active",
			Help: "Open SSH tunnels (local listeners forwarded over SSH).",
		}),
	}
	reg.MustRegister(m.connections, m.handshake, m.hostKeyFailures, m.sessions, m.tunnels)
	return m
}

// Hooks returns Hooks that update m. A nil *Metrics returns empty Hooks.
func (m *Metrics) Hooks() Hooks {
	if m == nil {
		return Hooks{}
	}
	return Hooks{
		Connection:     func(host, method, outcome string) { m.connections.WithLabelValues(host, method, outcome).Inc() },
		Handshake:      func(d time.Duration) { m.handshake.Observe(d.Seconds()) },
		HostKeyFailure: func(host, kind string) { m.hostKeyFailures.WithLabelValues(host, kind).Inc() },
		SessionsActive: func(delta int) { m.sessions.Add(float64(delta)) },
		TunnelsActive:  func(delta int) { m.tunnels.Add(float64(delta)) },
	}
}
