// Package natsconf is ferry's secured NATS server configuration as code: one NATS user
// per service, for the helpdesk system and for the operator's CLI, each with
// least-privilege publish and subscribe permissions derived from the names in
// contracts (subjects, streams, durable consumers, buckets), and the server
// configurations (one node, or a three-node cluster) rendered from them into
// deployments/nats/ (a test fails when the committed files are stale: make natsconf).
//
// The permissions name the precise subjects nats.go (v1.55, package jetstream) uses for
// every call ferry makes:
//
//	bind a durable consumer (js.Consumer)    $JS.API.CONSUMER.INFO.<stream>.<consumer>
//	fetch / consume                          $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>
//	ack, nak, term, in progress              $JS.ACK.<stream>.<consumer>.>  (and the v2 form
//	                                         $JS.ACK.<domain>.<account>.<stream>.<consumer>.>)
//	publish to a stream (js.Publish)         the stream's subject, the ack on the inbox
//	bind a bucket (js.KeyValue)              $JS.API.STREAM.INFO.KV_<bucket>
//	kv.Get                                   $JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>
//	                                         ($JS.API.STREAM.MSG.GET.KV_<bucket> without direct)
//	kv.Put, Create, Update, Delete           $KV.<bucket>.<key>
//	kv.Watch, ListKeys (ordered push)        $JS.API.CONSUMER.CREATE.KV_<bucket>.<name>.$KV.<bucket>.>,
//	                                         $JS.FC.KV_<bucket>.> (flow control replies),
//	                                         $JS.API.CONSUMER.DELETE.KV_<bucket>.<name> (on stop)
//	js.OrderedConsumer (ferry job watch)     $JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>,
//	                                         MSG.NEXT, INFO and DELETE of <stream>.<name>
//	js.AccountInfo (/healthz)                $JS.API.INFO
//	replies (requests, JetStream API)        <inbox prefix>.>, where the prefix is the user's
//	                                         own (bus.InboxPrefix): nobody reads another's replies
//
// Only the orchestrator provisions: it may create and update (never delete) ferry's
// streams, durable consumers and buckets. No user has $JS.> or $JS.API.>; no user may
// delete or purge a stream.
package natsconf

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
)

// NATS user names besides the services (whose users are named after the service).
const (
	// UserHelpdesk is the helpdesk system: it submits jobs and reads their events.
	UserHelpdesk = "helpdesk"
	// UserAdmin is the operator's ferry CLI: host inventory, the job API, watching jobs.
	UserAdmin = "admin"
)

// User is one NATS user of the secured server.
type User struct {
	Name string
	// About says in a line what the user is for (a comment in the configuration).
	About string
	Perms Permissions
}

// PasswordEnv is the environment variable the server configuration reads the user's
// password from: FERRY_NATS_PW_<NAME> (upper case, '-' as '_').
func (u User) PasswordEnv() string {
	return "FERRY_NATS_PW_" + strings.ToUpper(strings.ReplaceAll(u.Name, "-", "_"))
}

// Permissions are a user's allow and deny lists. Deny wins over allow.
type Permissions struct {
	PublishAllow, PublishDeny     []string
	SubscribeAllow, SubscribeDeny []string
	// AllowResponses lets the user answer the requests it receives (one reply each),
	// whatever their reply subject: the orchestrator's API.
	AllowResponses bool
}

// Stream and consumer names of key-value buckets, as nats.go makes them.
func kvStream(bucket string) string   { return "KV_" + bucket }
func kvSubjects(bucket string) string { return "$KV." + bucket + ".>" }

const jsAPI = "$JS.API."

// durable is a durable consumer that bus.Provision creates.
type durable struct {
	stream, name, filter string
}

// durables lists every durable consumer of bus.Provision, by stream.
func durables() []durable {
	ds := []durable{
		{contracts.StreamJobs, contracts.ConsumerOrchestratorJobs, ""},
		{contracts.StreamEvents, contracts.ConsumerOrchestratorEvents, contracts.SubjectStepEventsAll},
	}
	for _, s := range contracts.Workers {
		ds = append(ds, durable{contracts.StreamCommands, contracts.ConsumerName(s), contracts.CommandFilter(s)})
	}
	return ds
}

// streams lists every stream bus.Provision creates, buckets' streams included.
func streams() []string {
	return []string{
		contracts.StreamJobs, contracts.StreamCommands, contracts.StreamEvents,
		kvStream(contracts.BucketJobs), kvStream(contracts.BucketLeases), kvStream(contracts.BucketHosts),
		kvStream(contracts.BucketLeftovers),
	}
}

// builder collects a user's permissions.
type builder struct{ p Permissions }

func (b *builder) pub(subjects ...string)     { b.p.PublishAllow = append(b.p.PublishAllow, subjects...) }
func (b *builder) denyPub(subjects ...string) { b.p.PublishDeny = append(b.p.PublishDeny, subjects...) }
func (b *builder) sub(subjects ...string) {
	b.p.SubscribeAllow = append(b.p.SubscribeAllow, subjects...)
}

// inbox lets the user receive replies on its own inbox prefix only.
func (b *builder) inbox(user string) { b.sub(bus.InboxPrefix(user) + ".>") }

// health is what /healthz asks: JetStream account info.
func (b *builder) health() { b.pub(jsAPI + "INFO") }

// pull binds a durable pull consumer, fetches from it and acknowledges its messages.
func (b *builder) pull(stream, consumer string) {
	b.pub(
		jsAPI+"CONSUMER.INFO."+stream+"."+consumer,
		jsAPI+"CONSUMER.MSG.NEXT."+stream+"."+consumer,
		"$JS.ACK."+stream+"."+consumer+".>",
		// The v2 ack subjects (feature flag js_ack_fc_v2, off in nats-server 2.15)
		// carry the JetStream domain and account hash first.
		"$JS.ACK.*.*."+stream+"."+consumer+".>",
	)
}

// kvRead binds a bucket and reads keys.
func (b *builder) kvRead(bucket string) {
	s := kvStream(bucket)
	b.pub(
		jsAPI+"STREAM.INFO."+s,
		jsAPI+"DIRECT.GET."+s,
		jsAPI+"DIRECT.GET."+s+".>",
		jsAPI+"STREAM.MSG.GET."+s,
	)
}

// kvWatch watches a bucket and lists its keys: an ordered push consumer filtered on
// the bucket's subjects, with flow control, deleted when the watch stops.
func (b *builder) kvWatch(bucket string) {
	s := kvStream(bucket)
	b.pub(
		jsAPI+"CONSUMER.CREATE."+s+".*."+kvSubjects(bucket),
		jsAPI+"CONSUMER.INFO."+s+".*",
		jsAPI+"CONSUMER.DELETE."+s+".*",
		"$JS.FC."+s+".>",
		"$JS.FC.*.*."+s+".>", // v2 form, as for acks
	)
}

// kvWrite puts, updates and deletes keys of a bucket.
func (b *builder) kvWrite(bucket string) { b.pub(kvSubjects(bucket)) }

// watchEvents follows jobs as `ferry job watch` does: ephemeral ordered consumers on
// the events stream, filtered within the events' subjects, plus core subscriptions to
// the events. The orchestrator's durable on that stream stays out of reach: a watcher
// may not fetch from it (stealing step events), redefine it, or delete it.
func (b *builder) watchEvents() {
	s := contracts.StreamEvents
	b.pub(
		jsAPI+"CONSUMER.CREATE."+s+".*."+contracts.SubjectEventsAll,
		jsAPI+"CONSUMER.MSG.NEXT."+s+".*",
		jsAPI+"CONSUMER.INFO."+s+".*",
		jsAPI+"CONSUMER.DELETE."+s+".*",
	)
	for _, d := range durables() {
		if d.stream != s {
			continue
		}
		b.denyPub(
			jsAPI+"CONSUMER.CREATE."+s+"."+d.name,
			jsAPI+"CONSUMER.CREATE."+s+"."+d.name+".>",
			jsAPI+"CONSUMER.MSG.NEXT."+s+"."+d.name,
			jsAPI+"CONSUMER.DELETE."+s+"."+d.name,
		)
	}
	b.sub(contracts.SubjectEventsAll)
}

// never is denied to every user, whatever its allow list says.
func (b *builder) never() {
	b.denyPub(jsAPI+"STREAM.DELETE.>", jsAPI+"STREAM.PURGE.>")
}

// worker is what every worker service does: pull its commands, read job records
// (a command whose attempt is over is not run), report step events and progress,
// hear cancel signals, answer /healthz.
func (b *builder) worker(s contracts.Service) {
	b.health()
	b.pull(contracts.StreamCommands, contracts.ConsumerName(s))
	b.kvRead(contracts.BucketJobs)
	b.pub(contracts.StepEventSubject("*"), contracts.ProgressSubject("*"))
	b.sub(contracts.SubjectCancelSignalAll)
	b.inbox(string(s))
}

func (b *builder) done() Permissions {
	b.never()
	p := b.p
	for _, l := range []*[]string{&p.PublishAllow, &p.PublishDeny, &p.SubscribeAllow, &p.SubscribeDeny} {
		*l = dedupe(*l)
	}
	return p
}

// dedupe drops repeated subjects, keeping the first of each.
func dedupe(l []string) []string {
	var out []string
	for _, s := range l {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// Users returns every NATS user of the secured server, services first.
func Users() []User {
	return []User{
		{Name: string(contracts.ServiceOrchestrator), About: "provisions the bus, runs jobs, serves the job API", Perms: orchestrator()},
		{Name: string(contracts.ServiceConnector), About: "connect/tunnel/close: leases (read, write), hosts (read, pin keys), jobs (read)", Perms: connector()},
		{Name: string(contracts.ServiceTransfer), About: "moves bytes under leases: leases, hosts and jobs read-only", Perms: transfer()},
		{Name: string(contracts.ServiceArchiver), About: "archives and dumps in staging: job records read-only, no other bucket", Perms: archiver()},
		{Name: string(contracts.ServiceCleanup), About: "staging, retention and hosts' leftovers: leases, hosts and jobs read-only", Perms: cleanup()},
		{Name: UserHelpdesk, About: "the helpdesk system: submits jobs, reads job events", Perms: helpdesk()},
		{Name: UserAdmin, About: "the operator's ferry CLI: host inventory, job API, watching jobs", Perms: admin()},
	}
}

// Lookup returns the user named name.
func Lookup(name string) (User, error) {
	for _, u := range Users() {
		if u.Name == name {
			return u, nil
		}
	}
	return User{}, fmt.Errorf("no NATS user %q", name)
}

func orchestrator() Permissions {
	var b builder
	b.health()
	// Provisioning (bus.Provision): create and update (CreateOrUpdate tries the
	// update first), never delete.
	for _, s := range streams() {
		b.pub(jsAPI+"STREAM.CREATE."+s, jsAPI+"STREAM.UPDATE."+s)
	}
	for _, d := range durables() {
		create := jsAPI + "CONSUMER.CREATE." + d.stream + "." + d.name
		if d.filter == "" {
			b.pub(create)
		} else {
			b.pub(create + "." + d.filter)
		}
	}
	// Its own consumers: submissions and cancellations, step events.
	b.pull(contracts.StreamJobs, contracts.ConsumerOrchestratorJobs)
	b.pull(contracts.StreamEvents, contracts.ConsumerOrchestratorEvents)
	// Job records: read, watch (timers, list), compare-and-set.
	b.kvRead(contracts.BucketJobs)
	b.kvWatch(contracts.BucketJobs)
	b.kvWrite(contracts.BucketJobs)
	// Step commands, job events, cancel signals; the API re-publishes submissions and
	// queues cancellations on the jobs stream.
	b.pub(
		contracts.SubjectCommandsAll,
		contracts.JobEventSubject("*"),
		contracts.SubjectCancelSignalAll,
		contracts.SubjectJobSubmit,
		contracts.CancelRequestSubject("*"),
	)
	// The API, a NATS micro service: its endpoints and the $SRV discovery subjects
	// (PING, INFO, STATS; all, by name, by id). Replies go to the requester's inbox.
	b.sub(contracts.SubjectAPISubmit, contracts.SubjectAPIGet, contracts.SubjectAPIList, contracts.SubjectAPICancel)
	b.sub("$SRV.*", "$SRV.*."+contracts.APIServiceName, "$SRV.*."+contracts.APIServiceName+".*")
	b.p.AllowResponses = true
	b.inbox(string(contracts.ServiceOrchestrator))
	return b.done()
}

func connector() Permissions {
	var b builder
	b.worker(contracts.ServiceConnector)
	// Records, extends and revokes leases; watches revocations; sweeps expired ones.
	b.kvRead(contracts.BucketLeases)
	b.kvWatch(contracts.BucketLeases)
	b.kvWrite(contracts.BucketLeases)
	// Reads hosts to dial them, and pins a key trusted on first use (compare-and-set).
	b.kvRead(contracts.BucketHosts)
	b.kvWrite(contracts.BucketHosts)
	return b.done()
}

func transfer() Permissions {
	var b builder
	b.worker(contracts.ServiceTransfer)
	// Dials under leases (session.Dialer): reads leases and watches their revocation,
	// reads the host entry (address, user, credential reference) to dial.
	b.kvRead(contracts.BucketLeases)
	b.kvWatch(contracts.BucketLeases)
	b.kvRead(contracts.BucketHosts)
	return b.done()
}

func archiver() Permissions {
	var b builder
	// Works in staging and reaches databases through the connector's tunnels, whose
	// address comes in the command: it needs no bucket but the job records every
	// worker reads.
	b.worker(contracts.ServiceArchiver)
	return b.done()
}

func cleanup() Permissions {
	var b builder
	b.worker(contracts.ServiceCleanup)
	// Prune dials under leases like transfer; the staging sweep reads job records.
	b.kvRead(contracts.BucketLeases)
	b.kvWatch(contracts.BucketLeases)
	b.kvRead(contracts.BucketHosts)
	b.kvRead(contracts.BucketJobs)
	// Temporary files left on hosts out of reach: recorded at remove-staging, listed
	// and removed by the sweep.
	b.kvRead(contracts.BucketLeftovers)
	b.kvWatch(contracts.BucketLeftovers)
	b.kvWrite(contracts.BucketLeftovers)
	return b.done()
}

func helpdesk() Permissions {
	var b builder
	// Submit: durable on the jobs stream (JetStream publish, deduplicated by
	// Nats-Msg-Id), or synchronously through the API's submit endpoint.
	b.pub(contracts.SubjectJobSubmit, contracts.SubjectAPISubmit)
	// Job, step and progress events: live (core subscription) or from the first
	// (`ferry job watch`, `ferry update --wait`).
	b.watchEvents()
	b.inbox(UserHelpdesk)
	return b.done()
}

func admin() Permissions {
	var b builder
	b.health()
	// The job API (submit, get, list, cancel), submissions on the jobs stream, and
	// micro service discovery (nats micro ls / info).
	b.pub(contracts.SubjectAPIPrefix+".jobs.*", contracts.SubjectJobSubmit, "$SRV.>")
	b.watchEvents()
	// ferry host add/list/get/remove/trust.
	b.kvRead(contracts.BucketHosts)
	b.kvWatch(contracts.BucketHosts)
	b.kvWrite(contracts.BucketHosts)
	b.inbox(UserAdmin)
	return b.done()
}
