package worker

import (
	"github.com/ferrydesk/ferry/contracts"
	"github.com/prometheus/client_golang/prometheus"
)

// RunnerMetrics counts what the transport sees: redeliveries and terminated commands.
// A nil *RunnerMetrics counts nothing.
type RunnerMetrics struct {
	redeliveries *prometheus.CounterVec
	terminations *prometheus.CounterVec
}

// NewRunnerMetrics registers the runner's metrics on reg (labelled by the caller with
// the service name).
func NewRunnerMetrics(reg prometheus.Registerer) *RunnerMetrics {
	m := &RunnerMetrics{
		redeliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_step_redeliveries_total",
			Help: "Step commands delivered more than once (a worker died or was slow to ack).",
		}, []string{"op"}),
		terminations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_step_commands_terminated_total",
			Help: "Step commands terminated without running, by reason (poison, expired, superseded).",
		}, []string{"op", "reason"}),
	}
	reg.MustRegister(m.redeliveries, m.terminations)
	return m
}

// Init creates the series of ops at zero, so that rates and alerts see their first
// increase.
func (m *RunnerMetrics) Init(ops ...contracts.Op) {
	if m == nil {
		return
	}
	for _, op := range ops {
		m.redeliveries.WithLabelValues(string(op))
		for _, reason := range []string{"poison", "expired"} {
			m.terminations.WithLabelValues(string(op), reason)
		}
	}
}

func (m *RunnerMetrics) redelivered(op string) {
	if m != nil {
		m.redeliveries.WithLabelValues(op).Inc()
	}
}

func (m *RunnerMetrics) terminated(op, reason string) {
	if m != nil {
		m.terminations.WithLabelValues(op, reason).Inc()
	}
}

// EndpointMetrics instruments step endpoints: executions by op and outcome, their
// duration, and steps in flight.
type EndpointMetrics struct {
	steps    *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inflight *prometheus.GaugeVec
	bytes    *prometheus.CounterVec
}

// StepBuckets spans SSH steps from milliseconds to hours (the longest step timeout is
// 6 h).
var StepBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 21600}

// NewEndpointMetrics registers the endpoint metrics on reg.
func NewEndpointMetrics(reg prometheus.Registerer) *EndpointMetrics {
	m := &EndpointMetrics{
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_step_executions_total",
			Help: "Step attempts executed by this service, by op and outcome (succeeded, failed, cancelled).",
		}, []string{"op", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ferry_step_execution_duration_seconds",
			Help:    "Time a step attempt ran in this service.",
			Buckets: StepBuckets,
		}, []string{"op", "outcome"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_steps_in_flight",
			Help: "Step attempts running now in this service.",
		}, []string{"op"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_step_bytes_total",
			Help: "Bytes moved or written by steps, by op.",
		}, []string{"op"}),
	}
	reg.MustRegister(m.steps, m.duration, m.inflight, m.bytes)
	return m
}

// Outcomes of a step execution (label outcome).
var executionOutcomes = []string{"succeeded", "failed", "cancelled"}

// Init creates the series of ops at zero (executions by outcome, steps in flight,
// bytes), so that a dashboard shows every op and a rate sees its first increase.
func (m *EndpointMetrics) Init(ops ...contracts.Op) {
	if m == nil {
		return
	}
	for _, op := range ops {
		o := string(op)
		m.inflight.WithLabelValues(o)
		m.bytes.WithLabelValues(o)
		for _, outcome := range executionOutcomes {
			m.steps.WithLabelValues(o, outcome)
		}
	}
}
