package service

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the bytes the transfer service moves. A nil *Metrics records nothing.
type Metrics struct {
	bytes    *prometheus.CounterVec
	files    *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics registers ferry_transfer_bytes_total{direction,host},
// ferry_transfer_files_total{direction,host} and
// ferry_transfer_duration_seconds{direction} on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_transfer_bytes_total",
			Help: "Bytes moved over the wire by direction (pull, push, deliver, copy) and host; resumed and already-present bytes are not counted.",
		}, []string{"direction", "host"}),
		files: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_transfer_files_total",
			Help: "Files landed by direction and host.",
		}, []string{"direction", "host"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ferry_transfer_duration_seconds",
			Help:    "Duration of transfers (one step attempt), by direction.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600},
		}, []string{"direction"}),
	}
	reg.MustRegister(m.bytes, m.files, m.duration)
	return m
}

func (m *Metrics) record(direction, host string, bytes int64, files int, took time.Duration) {
	if m == nil {
		return
	}
	m.bytes.WithLabelValues(direction, host).Add(float64(bytes))
	m.files.WithLabelValues(direction, host).Add(float64(files))
	m.duration.WithLabelValues(direction).Observe(took.Seconds())
}
