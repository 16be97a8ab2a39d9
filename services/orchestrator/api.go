package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/nats-io/nats.go/micro"
)

// api is the request/reply face of the orchestrator (a NATS micro service): synchronous
// validation and submission, job lookup, listing and cancellation. Handlers are quick
// (one KV read or one publish); the work itself goes through JetStream.
type api struct {
	e *engine
}

// apiTimeout bounds a request; it stays under the CLI's default --timeout (10 s) and
// lets a submission ride out a stream leader election (see bus.PublishMsg).
const apiTimeout = 8 * time.Second

func (a *api) register(svc micro.Service) error {
	g := svc.AddGroup(contracts.SubjectAPIPrefix + ".jobs")
	for name, h := range map[string]micro.HandlerFunc{
		"submit": a.submit, "get": a.get, "list": a.list, "cancel": a.cancel,
	} {
		if err := g.AddEndpoint(name, h); err != nil {
			return err
		}
	}
	return nil
}

func respond(r micro.Request, v any) {
	data, _ := json.Marshal(v)
	_ = r.Respond(data)
}

func invalid(err error) *contracts.APIError {
	ae := &contracts.APIError{Code: "invalid", Message: err.Error()}
	var ve *contracts.ValidationError
	if errors.As(err, &ve) {
		ae.Fields = ve.Fields
	}
	return ae
}

func unavailable(err error) *contracts.APIError {
	return &contracts.APIError{Code: "unavailable", Message: err.Error()}
}

func (a *api) submit(r micro.Request) {
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	req, err := contracts.DecodeJobRequest(r.Data())
	if err != nil {
		respond(r, contracts.SubmitReply{Error: invalid(err)})
		return
	}
	if known(ctx, a.e.store, req.ID) {
		respond(r, contracts.SubmitReply{JobID: req.ID, Duplicate: true})
		return
	}
	m, _ := bus.Message(contracts.SubjectJobSubmit, nil, req.ID)
	m.Data = r.Data()
	// A caller that traces hands its trace to the job.
	if tp := r.Headers().Get(contracts.HeaderTraceParent); tp != "" {
		m.Header.Set(contracts.HeaderTraceParent, tp)
	}
	ack, err := bus.PublishMsg(ctx, a.e.js, m, req.ID)
	if err != nil {
		respond(r, contracts.SubmitReply{Error: unavailable(err)})
		return
	}
	respond(r, contracts.SubmitReply{JobID: req.ID, Duplicate: ack.Duplicate})
}

// known reports whether a record of job id exists. The look is short: the publish
// that follows deduplicates by the id anyway, and a store riding out an election must
// not spend the whole budget the publish needs.
func known(ctx context.Context, s *store, id string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, _, err := s.get(ctx, id)
	return err == nil
}

func (a *api) get(r micro.Request) {
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	var q contracts.GetRequest
	if err := json.Unmarshal(r.Data(), &q); err != nil || !contracts.ValidID(q.JobID) {
		respond(r, contracts.JobReply{Error: &contracts.APIError{Code: "invalid", Message: "job_id: must be a job id",
			Fields: []contracts.FieldError{{Field: "job_id", Problem: "must be a job id"}}}})
		return
	}
	j, _, err := a.e.store.get(ctx, q.JobID)
	switch {
	case errors.Is(err, errNoJob):
		respond(r, contracts.JobReply{Error: &contracts.APIError{Code: "not_found", Message: "no job " + q.JobID}})
	case err != nil:
		respond(r, contracts.JobReply{Error: unavailable(err)})
	default:
		respond(r, contracts.JobReply{Job: j})
	}
}

// list reads every record: fine for the thousands of jobs a helpdesk keeps; a larger
// install would index by time.
func (a *api) list(r micro.Request) {
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	var q contracts.ListRequest
	if len(r.Data()) > 0 {
		if err := json.Unmarshal(r.Data(), &q); err != nil {
			respond(r, contracts.ListReply{Error: invalid(err)})
			return
		}
	}
	if q.Limit <= 0 || q.Limit > 1000 {
		q.Limit = 50
	}
	keys, err := a.e.store.kv.ListKeys(ctx)
	if err != nil {
		respond(r, contracts.ListReply{Error: unavailable(err)})
		return
	}
	out := []contracts.JobSummary{}
	for k := range keys.Keys() {
		j, _, err := a.e.store.get(ctx, k)
		if err != nil || (q.State != "" && j.State != q.State) || (q.Action != "" && j.Action != q.Action) {
			continue
		}
		sum := contracts.JobSummary{ID: j.ID, Action: j.Action, State: j.State, Created: j.Created, Updated: j.Updated, Failure: j.Failure}
		if i := j.Current(); i >= 0 {
			sum.Step = j.Steps[i].Name
		}
		out = append(out, sum)
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Created.After(out[k].Created) })
	if len(out) > q.Limit {
		out = out[:q.Limit]
	}
	respond(r, contracts.ListReply{Jobs: out})
}

func (a *api) cancel(r micro.Request) {
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	var c contracts.CancelRequest
	if err := json.Unmarshal(r.Data(), &c); err != nil {
		respond(r, contracts.JobReply{Error: invalid(err)})
		return
	}
	if c.Schema == "" {
		c.Schema = contracts.SchemaCancel
	}
	if err := c.Validate(); err != nil {
		respond(r, contracts.JobReply{Error: invalid(err)})
		return
	}
	j, _, err := a.e.store.get(ctx, c.JobID)
	if errors.Is(err, errNoJob) {
		respond(r, contracts.JobReply{Error: &contracts.APIError{Code: "not_found", Message: "no job " + c.JobID}})
		return
	} else if err != nil {
		respond(r, contracts.JobReply{Error: unavailable(err)})
		return
	}
	if !j.State.Final() {
		if err := bus.Publish(ctx, a.e.js, contracts.CancelRequestSubject(c.JobID), c, c.JobID+"/cancel", c.JobID); err != nil {
			respond(r, contracts.JobReply{Error: unavailable(err)})
			return
		}
	}
	respond(r, contracts.JobReply{Job: j})
}
