package contracts

import "time"

// SchemaLease is the schema id of Lease.
const SchemaLease = "ferry.v1.lease"

// Lease records an SSH session that a job's connect step opened (bucket BucketLeases, key
// LeaseKey(job, host)). Other services dial the same host under it, requiring the host
// key fingerprint the connector verified. The close step deletes the job's leases and
// every service drops its connections for them; a lease past Expires is void.
type Lease struct {
	Schema      string    `json:"schema"`
	JobID       string    `json:"job_id"`
	Host        string    `json:"host"`
	Address     string    `json:"address"`
	Fingerprint string    `json:"fingerprint"`
	AuthMethod  string    `json:"auth_method"`
	Connector   string    `json:"connector"` // the replica holding the connection
	Created     time.Time `json:"created"`
	Expires     time.Time `json:"expires"`
	Tunnels     []Tunnel  `json:"tunnels,omitempty"`
}

// Tunnel is a port forward recorded in a lease.
type Tunnel struct {
	Remote string `json:"remote"` // host:port as seen from the leased host
	Addr   string `json:"addr"`   // where the connector listens for it
}

// LeaseKey is the key of a job's lease on host. Job ids and host names never contain
// '.', so the key splits back unambiguously.
func LeaseKey(job, host string) string { return job + "." + host }

// LeaseKeysOfJob matches every lease key of a job (a KV watch/list filter).
func LeaseKeysOfJob(job string) string { return job + ".*" }
