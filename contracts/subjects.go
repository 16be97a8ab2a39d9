package contracts

import (
	"fmt"
	"regexp"
)

// Subject prefix of version 1 of the contract.
const Prefix = "ferry.v1"

// Subjects.
const (
	// SubjectJobSubmit receives JobRequest messages (stream StreamJobs). Publishers set
	// the Nats-Msg-Id header to the request id so a retried publish is one job.
	SubjectJobSubmit = Prefix + ".jobs.submit"
	// SubjectJobCancelPrefix + "." + job receives CancelRequest messages (stream StreamJobs).
	SubjectJobCancelPrefix = Prefix + ".jobs.cancel"
	// SubjectJobsAll matches every subject of stream StreamJobs.
	SubjectJobsAll = Prefix + ".jobs.>"

	// SubjectCommandsAll matches every step command (stream StreamCommands).
	SubjectCommandsAll = Prefix + ".cmd.>"

	// SubjectEventsAll matches every event (stream StreamEvents).
	SubjectEventsAll = Prefix + ".evt.>"
	// SubjectStepEventsAll matches every step completion event.
	SubjectStepEventsAll = Prefix + ".evt.step.>"

	// SubjectCancelSignalPrefix + "." + job is a core-NATS signal (not stored) that tells
	// workers to abort in-flight work of a job.
	SubjectCancelSignalPrefix = Prefix + ".ctl.cancel"
	// SubjectCancelSignalAll matches every cancel signal.
	SubjectCancelSignalAll = SubjectCancelSignalPrefix + ".*"

	// SubjectAPIPrefix is the prefix of the orchestrator's request/reply API
	// (NATS micro service APIServiceName).
	SubjectAPIPrefix = Prefix + ".api"
	// SubjectAPISubmit validates and submits a job synchronously: JobRequest → SubmitReply.
	SubjectAPISubmit = SubjectAPIPrefix + ".jobs.submit"
	// SubjectAPIGet returns one job: GetRequest → JobReply.
	SubjectAPIGet = SubjectAPIPrefix + ".jobs.get"
	// SubjectAPIList lists jobs: ListRequest → ListReply.
	SubjectAPIList = SubjectAPIPrefix + ".jobs.list"
	// SubjectAPICancel requests cancellation: CancelRequest → JobReply.
	SubjectAPICancel = SubjectAPIPrefix + ".jobs.cancel"
)

// APIServiceName is the NATS micro service name of the orchestrator's API.
const APIServiceName = "ferry-api"

// Streams.
const (
	StreamJobs     = "FERRY_JOBS"
	StreamCommands = "FERRY_CMDS"
	StreamEvents   = "FERRY_EVENTS"
)

// Key-value buckets.
const (
	BucketJobs   = "ferry_jobs"
	BucketLeases = "ferry_leases"
	BucketHosts  = "ferry_hosts"
	// BucketLeftovers holds the job's temporary files on hosts that its cleanup could
	// not remove (the host out of reach): cleanup's sweep removes them later.
	BucketLeftovers = "ferry_leftovers"
)

// Durable consumer names.
const (
	ConsumerOrchestratorJobs   = "orchestrator-jobs"
	ConsumerOrchestratorEvents = "orchestrator-step-events"
)

// Service names a worker service, the third token of its command subjects.
type Service string

// The services.
const (
	ServiceOrchestrator Service = "orchestrator"
	ServiceConnector    Service = "connector"
	ServiceTransfer     Service = "transfer"
	ServiceArchiver     Service = "archiver"
	ServiceCleanup      Service = "cleanup"
)

// Workers lists the services that execute step commands.
var Workers = []Service{ServiceConnector, ServiceTransfer, ServiceArchiver, ServiceCleanup}

// ConsumerName is the durable consumer that every replica of a worker service shares.
func ConsumerName(s Service) string { return "worker-" + string(s) }

// CommandSubject is the subject of a step command for service s and operation op:
// ferry.v1.cmd.<service>.<op>.
func CommandSubject(s Service, op Op) string {
	return fmt.Sprintf("%s.cmd.%s.%s", Prefix, s, op)
}

// CommandFilter matches every command of service s.
func CommandFilter(s Service) string { return fmt.Sprintf("%s.cmd.%s.>", Prefix, s) }

// StepEventSubject carries StepEvent messages of a job: ferry.v1.evt.step.<job>.
func StepEventSubject(job string) string { return Prefix + ".evt.step." + job }

// ProgressSubject carries Progress messages of a job: ferry.v1.evt.progress.<job>.
// The orchestrator does not consume them; watchers do.
func ProgressSubject(job string) string { return Prefix + ".evt.progress." + job }

// JobEventSubject carries JobEvent messages of a job: ferry.v1.evt.job.<job>.
func JobEventSubject(job string) string { return Prefix + ".evt.job." + job }

// JobEventsAll matches the job events of every job.
const JobEventsAll = Prefix + ".evt.job.*"

// WatchFilter matches job, step and progress events of one job.
func WatchFilter(job string) string { return Prefix + ".evt.*." + job }

// CancelRequestSubject is where a cancellation of job is queued.
func CancelRequestSubject(job string) string { return SubjectJobCancelPrefix + "." + job }

// CancelSignalSubject tells workers to abort work of job.
func CancelSignalSubject(job string) string { return SubjectCancelSignalPrefix + "." + job }

// CommandMsgID is the Nats-Msg-Id of a step command: <job>/<step>/<attempt>.
func CommandMsgID(job, step string, attempt int) string {
	return fmt.Sprintf("%s/%s/%d", job, step, attempt)
}

// StepEventMsgID is the Nats-Msg-Id of a step event: one per job, step, attempt and kind,
// so a redelivered command that completes twice records one completion.
func StepEventMsgID(job, step string, attempt int, kind StepEventKind) string {
	return fmt.Sprintf("%s/%s/%d/%s", job, step, attempt, kind)
}

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// ValidID reports whether s can be a job id or host name: it becomes a subject token and
// a KV key, so it is 1–64 letters, digits, '-' or '_', starting with a letter or digit.
func ValidID(s string) bool { return tokenRE.MatchString(s) }

// Header names.
const (
	// HeaderCorrelationID carries the job id on every message that concerns a job.
	HeaderCorrelationID = "Ferry-Correlation-Id"
	// HeaderTraceParent carries W3C trace context where a trace exists.
	HeaderTraceParent = "traceparent"
)
