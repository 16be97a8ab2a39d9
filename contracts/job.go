package contracts

import (
	"encoding/json"
	"time"
)

// SchemaJob is the schema id of a job record.
const SchemaJob = "ferry.v1.job"

// JobState is where a job is.
type JobState string

// Job states. Succeeded, failed, cancelled and rejected are final.
const (
	JobPending    JobState = "pending"
	JobRunning    JobState = "running"
	JobCancelling JobState = "cancelling" // waiting for the step in flight to stop
	JobClosing    JobState = "closing"    // running the always-run closing steps
	JobSucceeded  JobState = "succeeded"
	JobFailed     JobState = "failed"
	JobCancelled  JobState = "cancelled"
	JobRejected   JobState = "rejected"
)

// Final reports whether nothing more happens to a job in state s.
func (s JobState) Final() bool {
	return s == JobSucceeded || s == JobFailed || s == JobCancelled || s == JobRejected
}

// StepState is where a step is.
type StepState string

// Step states.
const (
	StepPending   StepState = "pending"
	StepRunning   StepState = "running"
	StepWaiting   StepState = "waiting" // failed, waiting for its next attempt
	StepDone      StepState = "succeeded"
	StepFailedS   StepState = "failed"
	StepSkipped   StepState = "skipped"
	StepCancelled StepState = "cancelled"
)

// Final reports whether the step will not run again.
func (s StepState) Final() bool {
	return s == StepDone || s == StepFailedS || s == StepSkipped || s == StepCancelled
}

// Job is the record of one job, kept in bucket BucketJobs under its id and changed only
// by compare-and-set on the entry's revision.
type Job struct {
	Schema  string          `json:"schema"`
	ID      string          `json:"id"`
	Action  Action          `json:"action"`
	Request json.RawMessage `json:"request"`
	State   JobState        `json:"state"`
	Steps   []Step          `json:"steps"`
	// Failure is the first failure that decided the job's outcome.
	Failure *JobFailure `json:"failure,omitempty"`
	// CancelRequested is set once a cancel was asked for.
	CancelRequested bool      `json:"cancel_requested,omitempty"`
	CancelReason    string    `json:"cancel_reason,omitempty"`
	Created         time.Time `json:"created"`
	Updated         time.Time `json:"updated"`
	Finished        time.Time `json:"finished,omitzero"`
	// Events counts the job events published so far; it numbers their message ids.
	Events int `json:"events"`
	// TraceID is the W3C trace id of the job (32 lowercase hex digits): the one of the
	// traceparent header its request came with, else derived from the job id. Every
	// message about the job carries it in its traceparent header, and every service
	// logs it as trace_id.
	TraceID string `json:"trace_id,omitempty"`
}

// Step is one step of a job record.
type Step struct {
	Name    string    `json:"name"`
	Service Service   `json:"service"`
	Op      Op        `json:"op"`
	Always  bool      `json:"always,omitempty"`
	State   StepState `json:"state"`
	Attempt int       `json:"attempt"`
	// Dispatched is set once the command of the current attempt was published.
	Dispatched bool `json:"dispatched,omitempty"`
	// Started is when the first attempt started; AttemptStarted when the current one did.
	Started        time.Time  `json:"started,omitzero"`
	AttemptStarted time.Time  `json:"attempt_started,omitzero"`
	Ended          time.Time  `json:"ended,omitzero"`
	Deadline       time.Time  `json:"deadline,omitzero"`
	RetryAt        time.Time  `json:"retry_at,omitzero"`
	Error          *StepError `json:"error,omitempty"`
	// Output is the result of the successful attempt.
	Output json.RawMessage `json:"output,omitempty"`
	Bytes  int64           `json:"bytes,omitempty"`
	// Elapsed is the time spent in attempts, summed.
	Elapsed time.Duration `json:"elapsed_ns,omitempty"`
}

// JobFailure names the step that failed a job and why.
type JobFailure struct {
	Step    string `json:"step"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Current returns the index of the first step that is not final, or -1.
func (j *Job) Current() int {
	for i := range j.Steps {
		if !j.Steps[i].State.Final() {
			return i
		}
	}
	return -1
}

// SchemaJobEvent is the schema id of JobEvent.
const SchemaJobEvent = "ferry.v1.job.event"

// JobEventKind says what happened to a job.
type JobEventKind string

// Job event kinds.
const (
	EventAccepted      JobEventKind = "accepted"
	EventRejected      JobEventKind = "rejected"
	EventStepStarted   JobEventKind = "step-started"
	EventStepSucceeded JobEventKind = "step-succeeded"
	EventStepRetrying  JobEventKind = "step-retrying"
	EventStepFailed    JobEventKind = "step-failed"
	EventStepSkipped   JobEventKind = "step-skipped"
	EventCancelling    JobEventKind = "cancelling"
	EventFinished      JobEventKind = "finished"
)

// JobEvent is published on JobEventSubject(job) for watchers (helpdesk system, CLI).
type JobEvent struct {
	Schema  string       `json:"schema"`
	JobID   string       `json:"job_id"`
	Seq     int          `json:"seq"`
	Action  Action       `json:"action,omitempty"`
	Kind    JobEventKind `json:"kind"`
	State   JobState     `json:"state"`
	Step    string       `json:"step,omitempty"`
	Attempt int          `json:"attempt,omitempty"`
	Error   *StepError   `json:"error,omitempty"`
	// Rejection lists the bad fields of a rejected request.
	Rejection *ValidationError `json:"rejection,omitempty"`
	Failure   *JobFailure      `json:"failure,omitempty"`
	Time      time.Time        `json:"time"`
}

// SchemaCancel is the schema id of CancelRequest.
const SchemaCancel = "ferry.v1.job.cancel"

// CancelRequest asks to cancel a job; the closing steps still run.
type CancelRequest struct {
	Schema string `json:"schema"`
	JobID  string `json:"job_id"`
	Reason string `json:"reason,omitempty"`
}

// Validate checks a cancel request.
func (c *CancelRequest) Validate() error {
	v := &ValidationError{}
	if c.Schema != SchemaCancel {
		v.add("schema", "must be %q", SchemaCancel)
	}
	if !ValidID(c.JobID) {
		v.add("job_id", "must be a job id")
	}
	if len(c.Reason) > 500 {
		v.add("reason", "longer than 500 characters")
	}
	if len(v.Fields) > 0 {
		return v
	}
	return nil
}

// API payloads (request/reply on SubjectAPI*).

// APIError is the error half of every API reply.
type APIError struct {
	Code    string       `json:"code"` // invalid, not_found, unavailable, internal
	Message string       `json:"message"`
	Fields  []FieldError `json:"fields,omitempty"`
}

func (e *APIError) Error() string { return e.Message }

// SubmitReply answers a submit: the job id, or an error naming the bad fields.
type SubmitReply struct {
	JobID string `json:"job_id,omitempty"`
	// Duplicate is true when a job with this id existed already.
	Duplicate bool      `json:"duplicate,omitempty"`
	Error     *APIError `json:"error,omitempty"`
}

// GetRequest asks for one job.
type GetRequest struct {
	JobID string `json:"job_id"`
}

// JobReply carries one job.
type JobReply struct {
	Job   *Job      `json:"job,omitempty"`
	Error *APIError `json:"error,omitempty"`
}

// ListRequest lists jobs, newest first.
type ListRequest struct {
	State  JobState `json:"state,omitempty"`
	Action Action   `json:"action,omitempty"`
	Limit  int      `json:"limit,omitempty"`
}

// JobSummary is one row of a list.
type JobSummary struct {
	ID      string      `json:"id"`
	Action  Action      `json:"action"`
	State   JobState    `json:"state"`
	Step    string      `json:"step,omitempty"`
	Created time.Time   `json:"created"`
	Updated time.Time   `json:"updated"`
	Failure *JobFailure `json:"failure,omitempty"`
}

// ListReply carries a list of jobs.
type ListReply struct {
	Jobs  []JobSummary `json:"jobs"`
	Error *APIError    `json:"error,omitempty"`
}
