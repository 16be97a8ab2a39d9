package contracts

import "time"

// SchemaPendingLeftover is the schema id of PendingLeftover.
const SchemaPendingLeftover = "ferry.v1.pending-leftover"

// PendingLeftover is a job's temporary files on a host that the job's cleanup could
// not remove, the host being out of reach (bucket BucketLeftovers, key
// LeaseKey(job, host)). Cleanup's sweep removes them once the host answers again, or
// gives up, logging the paths, once Since is PendingLeftoverMaxAge ago.
type PendingLeftover struct {
	Schema string    `json:"schema"`
	JobID  string    `json:"job_id"`
	Since  time.Time `json:"since"`
	Reason string    `json:"reason"` // why the last removal failed
	Leftover
}

// PendingLeftoverMaxAge is how long cleanup keeps trying a host for a job's leftovers.
const PendingLeftoverMaxAge = 30 * 24 * time.Hour
