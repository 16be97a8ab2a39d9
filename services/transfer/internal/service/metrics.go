package service

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the bytes the transfer service moves. A nil *Metrics records nothing.
type Metrics struct {
	bytes      *prometheus.CounterVec
	files      *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	throughput *prometheus.HistogramVec
}

// NewMetrics registers ferry_transfer_bytes_total{direction,host},
// ferry_transfer_files_total{direction,host}, ferry_transfer_duration_seconds{direction}
// and ferry_transfer_throughput_bytes_per_second{direction} on reg. The series of
// every direction start at zero.
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
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 21600},
		}, []string{"direction"}),
		// From a slow WAN link (64 KiB/s) to local disks (1 GiB/s), a factor 2 apart.
		throughput: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ferry_transfer_throughput_bytes_per_second",
			Help:    "Throughput of each transfer (one step attempt that moved bytes): bytes over the wire divided by its duration, by direction.",
			Buckets: prometheus.ExponentialBuckets(64<<10, 2, 15),
		}, []string{"direction"}),
	}
	reg.MustRegister(m.bytes, m.files, m.duration, m.throughput)
	for _, d := range []string{DirCopy, DirPull, DirPush, DirDeliver} {
		m.duration.WithLabelValues(d)
		m.throughput.WithLabelValues(d)
	}
	return m
}

func (m *Metrics) record(direction, host string, bytes int64, files int, took time.Duration) {
	if m == nil {
		return
	}
	m.bytes.WithLabelValues(direction, host).Add(float64(bytes))
	m.files.WithLabelValues(direction, host).Add(float64(files))
	m.duration.WithLabelValues(direction).Observe(took.Seconds())
	if bytes > 0 && took > 0 {
		m.throughput.WithLabelValues(direction).Observe(float64(bytes) / took.Seconds())
	}
}
