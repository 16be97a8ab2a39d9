package orchestrator

import (
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/prometheus/client_golang/prometheus"
)

// jobBuckets span jobs from a fraction of a second to half a day.
var jobBuckets = []float64{.05, .25, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200}

// stepBuckets span steps from a few milliseconds (a lease revoked, nothing to prune)
// to hours (a transfer or dump may take up to its 6 h timeout, retries more).
var stepBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 21600, 43200}

// Outcomes of jobs and steps (label outcome) as the metrics count them.
var (
	jobOutcomes  = []contracts.JobState{contracts.JobSucceeded, contracts.JobFailed, contracts.JobCancelled}
	stepOutcomes = []contracts.StepState{contracts.StepDone, contracts.StepFailedS, contracts.StepCancelled}
)

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

func newMetrics(reg prometheus.Registerer, wf Workflows) *metrics {
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
			Buckets: stepBuckets,
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
	// Every counter a dashboard or an alert reads starts at zero for every action and
	// step of the workflows: a rate then sees the first failure, and a panel shows
	// the steps that never failed.
	for _, a := range contracts.Actions {
		m.inFlight.WithLabelValues(string(a))
		for _, o := range jobOutcomes {
			m.jobs.WithLabelValues(string(a), string(o))
		}
		for _, d := range wf[a].Steps {
			m.retries.WithLabelValues(string(a), d.Name)
			m.timeouts.WithLabelValues(string(a), d.Name)
			for _, o := range stepOutcomes {
				m.steps.WithLabelValues(string(a), d.Name, string(o))
			}
		}
	}
	return m
}

// registerPastDeadline registers ferry_steps_past_deadline{action}: steps running past
// their attempt's deadline, counted at scrape time from the job records this replica
// follows. The orchestrator times an attempt out at its deadline, so a step stays
// there only when timing it out fails (the replica is stuck, the store refuses it).
func registerPastDeadline(reg prometheus.Registerer, e *engine) {
	reg.MustRegister(&pastDeadline{e: e, desc: prometheus.NewDesc("ferry_steps_past_deadline",
		"Steps running past their attempt's deadline (the orchestrator should have timed them out), by action.",
		[]string{"action"}, nil)})
}

type pastDeadline struct {
	e    *engine
	desc *prometheus.Desc
}

func (p *pastDeadline) Describe(ch chan<- *prometheus.Desc) { ch <- p.desc }

func (p *pastDeadline) Collect(ch chan<- prometheus.Metric) {
	n := p.e.pastDeadline(time.Now())
	for _, a := range contracts.Actions {
		ch <- prometheus.MustNewConstMetric(p.desc, prometheus.GaugeValue, float64(n[a]), string(a))
	}
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
