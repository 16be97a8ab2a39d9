package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/logctx"
	"github.com/go-kit/kit/endpoint"
)

// Op binds one operation of a service to a go-kit endpoint and to the decoder of its
// arguments. Build it with Typed.
type Op struct {
	Name     contracts.Op
	Endpoint endpoint.Endpoint
	decode   func(json.RawMessage) (any, error)
}

// BytesCounter is implemented by results that moved bytes.
type BytesCounter interface{ BytesMoved() int64 }

// Typed adapts a service method to an Op: the arguments are decoded strictly into Req
// (an unknown or malformed argument makes the command poison), the method's Resp becomes
// the step's output.
func Typed[Req, Resp any](name contracts.Op, method func(context.Context, Req) (Resp, error)) Op {
	return Op{
		Name: name,
		Endpoint: func(ctx context.Context, req any) (any, error) {
			return method(ctx, req.(Req))
		},
		decode: func(raw json.RawMessage) (any, error) {
			var req Req
			if len(raw) == 0 {
				raw = json.RawMessage("{}")
			}
			if err := strictUnmarshal(raw, &req); err != nil {
				return nil, err
			}
			return req, nil
		},
	}
}

func strictUnmarshal(raw json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// NewHandler builds the runner's Handler from a service's ops, wrapping every endpoint in
// mws (outermost first).
func NewHandler(service contracts.Service, ops []Op, mws ...endpoint.Middleware) Handler {
	byName := make(map[contracts.Op]Op, len(ops))
	for _, op := range ops {
		ep := op.Endpoint
		for i := len(mws) - 1; i >= 0; i-- {
			ep = mws[i](ep)
		}
		op.Endpoint = ep
		byName[op.Name] = op
	}
	return func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		op, ok := byName[cmd.Op]
		if !ok {
			return Result{}, ErrNotSupported(service, cmd.Op)
		}
		req, err := op.decode(cmd.Args)
		if err != nil {
			return Result{}, Permanent(contracts.CodeInvalidCommand, fmt.Errorf("%s %s: bad arguments: %v", service, cmd.Op, err))
		}
		ctx = context.WithValue(ctx, opKey{}, cmd.Op)
		out, err := op.Endpoint(ctx, req)
		if err != nil {
			return Result{}, err
		}
		res := Result{Output: out}
		if b, ok := out.(BytesCounter); ok {
			res.Bytes = b.BytesMoved()
		}
		return res, nil
	}
}

type opKey struct{}

func opOf(ctx context.Context) string {
	op, _ := ctx.Value(opKey{}).(contracts.Op)
	return string(op)
}

// Logging logs the start and end of every step at the endpoint with the job's logger.
func Logging() endpoint.Middleware {
	return func(next endpoint.Endpoint) endpoint.Endpoint {
		return func(ctx context.Context, req any) (any, error) {
			log := logctx.From(ctx)
			start := time.Now()
			log.Info("step started")
			resp, err := next(ctx, req)
			if err != nil {
				se := Classify(err)
				log.Info("step ended", "outcome", "failed", "code", se.Code, "error", se.Message, "took", time.Since(start))
			} else {
				log.Info("step ended", "outcome", "succeeded", "took", time.Since(start))
			}
			return resp, err
		}
	}
}

// Instrumenting records executions, durations, steps in flight and bytes.
func Instrumenting(m *EndpointMetrics) endpoint.Middleware {
	return func(next endpoint.Endpoint) endpoint.Endpoint {
		return func(ctx context.Context, req any) (any, error) {
			op := opOf(ctx)
			m.inflight.WithLabelValues(op).Inc()
			defer m.inflight.WithLabelValues(op).Dec()
			start := time.Now()
			resp, err := next(ctx, req)
			outcome := "succeeded"
			if err != nil {
				outcome = "failed"
				if Classify(err).Code == contracts.CodeCancelled || errors.Is(err, context.Canceled) {
					outcome = "cancelled"
				}
			} else if b, ok := resp.(BytesCounter); ok {
				m.bytes.WithLabelValues(op).Add(float64(b.BytesMoved()))
			}
			m.steps.WithLabelValues(op, outcome).Inc()
			m.duration.WithLabelValues(op, outcome).Observe(time.Since(start).Seconds())
			return resp, err
		}
	}
}
