package orchestrator

import (
	"github.com/ferrydesk/ferry/contracts"
	"github.com/prometheus/client_golang/prometheus"
)

// jobBuckets span jobs from a second to half a day.
var jobBuckets = []float64{.05, .25, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200}

type metrics struct {
	jobs       *prometheus.CounterVec
	rejected   prometheus.Counter
	duration   *prometheus.HistogramVec
	stepDur    *prometheus.HistogramVec
	steps      *prometheus.CounterVec
	retries    *prometheus.CounterVec
	timeouts   *prometheus.CounterVec
	inFlight   *prometheus.GaugeVec
	casRetries prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_jobs_total", Help: "Jobs finished, by action and outcome (succeeded, failed, cancelled).",
		}, []string{"action", "outcome"}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_jobs_rejected_total", Help: "Job requests rejected as invalid.",
		}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ferry_job_duration_seconds", Help: "Time from acceptance to the end of a job's closing steps.",
			Buckets: jobBuckets,
		}, []string{"action", "outcome"}),
		stepDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ferry_step_duration_seconds", Help: "Time from a step's first dispatch to its end, retries included.",
			Buckets: jobBuckets,
		}, []string{"action", "step", "outcome"}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_steps_total", Help: "Steps ended, by action, step and outcome (the step names its service and op).",
		}, []string{"action", "step", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_step_retries_total", Help: "Step attempts that failed and were scheduled again.",
		}, []string{"action", "step"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_step_timeouts_total", Help: "Step attempts that passed their timeout.",
		}, []string{"action", "step"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_jobs_in_flight", Help: "Jobs accepted and not yet finished (every replica sees all of them).",
		}, []string{"action"}),
		casRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_job_record_conflicts_total", Help: "Compare-and-set conflicts on job records (replicas racing).",
		}),
	}
	reg.MustRegister(m.jobs, m.rejected, m.duration, m.stepDur, m.steps, m.retries, m.timeouts, m.inFlight, m.casRetries)
	for _, a := range contracts.Actions {
		m.inFlight.WithLabelValues(string(a))
	}
	return m
}

// observe records what a stored transition did.
func (m *metrics) observe(j *contracts.Job, before map[string]contracts.StepState, fx effects) {
	a := string(j.Action)
	for _, s := range fx.retried {
		m.retries.WithLabelValues(a, s).Inc()
	}
	for _, s := range fx.timedOut {
		m.timeouts.WithLabelValues(a, s).Inc()
	}
	for _, s := range j.Steps {
		if before[s.Name] != s.State && (s.State == contracts.StepDone || s.State == contracts.StepFailedS || s.State == contracts.StepCancelled) {
			m.steps.WithLabelValues(a, s.Name, string(s.State)).Inc()
			if !s.Started.IsZero() {
				m.stepDur.WithLabelValues(a, s.Name, string(s.State)).Observe(s.Ended.Sub(s.Started).Seconds())
			}
		}
	}
	if fx.finished {
		m.jobs.WithLabelValues(a, string(j.State)).Inc()
		m.duration.WithLabelValues(a, string(j.State)).Observe(j.Finished.Sub(j.Created).Seconds())
	}
}

func stepStates(j *contracts.Job) map[string]contracts.StepState {
	if j == nil {
		return nil
	}
	m := make(map[string]contracts.StepState, len(j.Steps))
	for _, s := range j.Steps {
		m[s.Name] = s.State
	}
	return m
}
