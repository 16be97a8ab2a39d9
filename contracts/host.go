package contracts

// Host is one entry of the host inventory (KV bucket BucketHosts, key = Name).
// Jobs name hosts; the connector resolves them here. A Host never carries a secret:
// Credential is a reference resolved against the secrets directory of the service.
type Host struct {
	Schema string `json:"schema"` // SchemaHost
	// Name is the inventory key: a subject-safe token.
	Name    string `json:"name"`
	Address string `json:"address"`
	Port    int    `json:"port"`
	User    string `json:"user"`
	// Credential names a directory below the secrets directory (see pkg/sshdial).
	Credential string `json:"credential"`
	// HostKeys are the pinned public host keys in authorized_keys format
	// ("ssh-ed25519 AAAA..."). A host pinned with several key types connects with any.
	HostKeys []string `json:"host_keys,omitempty"`
	// TrustOnFirstUse lets the first connection pin the key it sees when HostKeys is empty.
	TrustOnFirstUse bool `json:"trust_on_first_use,omitempty"`
	// Site labels the location the host belongs to (remote sites, relays).
	Site string `json:"site,omitempty"`
	// Roots are the directories on the host that jobs may read from or write to.
	// Empty means the login user's home directory only.
	Roots []string `json:"roots,omitempty"`
}

// SchemaHost is the schema id of Host.
const SchemaHost = "ferry.v1.host"
