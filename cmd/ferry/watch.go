package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// watch prints the events of job from its first, and the progress of its steps, until
// the job finishes or is rejected, and returns the error that gives the exit code: nil
// for a job that succeeded, a failure (1) for one that failed or was cancelled, a
// usage error (2) for a rejected request.
func (a *app) watch(ctx context.Context, nc *nats.Conn, job string, limit time.Duration) error {
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.OrderedConsumer(ctx, contracts.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{contracts.WatchFilter(job)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("watching job %s: %w", job, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("watching job %s: %w", job, err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		switch {
		case errors.Is(err, context.DeadlineExceeded) && limit > 0:
			return failure(fmt.Errorf("job %s did not end within %s (it goes on; 'ferry job watch %s' follows it)", job, limit, job))
		case errors.Is(err, context.Canceled):
			return failure(fmt.Errorf("stopped watching job %s (it goes on)", job))
		case errors.Is(err, nats.ErrTimeout):
			continue
		case err != nil:
			return fmt.Errorf("watching job %s: %w", job, err)
		}
		done, err := a.printEvent(msg)
		if done {
			return err
		}
	}
}

// printEvent prints one message of the watch filter; done is true with the job's last
// event, and err then carries the outcome.
func (a *app) printEvent(msg jetstream.Msg) (done bool, err error) {
	// ferry.v1.evt.<kind>.<job>
	parts := strings.Split(msg.Subject(), ".")
	if len(parts) != 5 {
		return false, nil
	}
	switch parts[3] {
	case "job":
		var ev contracts.JobEvent
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			fmt.Fprintf(a.stderr, "ferry: undecodable job event: %v\n", err)
			return false, nil
		}
		if a.output == "json" {
			fmt.Fprintf(a.stdout, "%s\n", compact(msg.Data()))
		} else {
			fmt.Fprintln(a.stdout, jobEventLine(ev))
		}
		return outcome(ev)
	case "progress":
		var p contracts.Progress
		if err := json.Unmarshal(msg.Data(), &p); err != nil {
			return false, nil
		}
		if a.output == "json" {
			fmt.Fprintf(a.stdout, "%s\n", compact(msg.Data()))
		} else {
			fmt.Fprintln(a.stdout, progressLine(p))
		}
	}
	// Step events repeat what the job events say, for the orchestrator.
	return false, nil
}

func compact(data []byte) []byte {
	var v json.RawMessage = data
	if out, err := json.Marshal(v); err == nil {
		return out
	}
	return data
}

// outcome decides whether ev ends the watch and with which error.
func outcome(ev contracts.JobEvent) (bool, error) {
	switch ev.Kind {
	case contracts.EventRejected:
		if ev.Rejection != nil {
			return true, usageError(ev.Rejection)
		}
		return true, usageError(fmt.Errorf("job %s was rejected", ev.JobID))
	case contracts.EventFinished:
		switch ev.State {
		case contracts.JobSucceeded:
			return true, nil
		case contracts.JobCancelled:
			return true, failure(fmt.Errorf("job %s was cancelled", ev.JobID))
		}
		msg := fmt.Sprintf("job %s %s", ev.JobID, ev.State)
		if ev.Failure != nil {
			msg += ": " + failureText(ev.Failure)
		}
		return true, failure(errors.New(msg))
	}
	return false, nil
}

// jobEventLine is one line of `ferry job watch`, e.g.
// "step connect-operator started (attempt 1)".
func jobEventLine(ev contracts.JobEvent) string {
	stepErr := func() string {
		if ev.Error == nil {
			return ""
		}
		return fmt.Sprintf(": %s: %s", ev.Error.Code, ev.Error.Message)
	}
	switch ev.Kind {
	case contracts.EventAccepted:
		return fmt.Sprintf("job %s accepted (%s)", ev.JobID, ev.Action)
	case contracts.EventRejected:
		line := fmt.Sprintf("job %s rejected", ev.JobID)
		if ev.Rejection != nil {
			for _, f := range ev.Rejection.Fields {
				line += fmt.Sprintf("\n  %s: %s", f.Field, f.Problem)
			}
		}
		return line
	case contracts.EventStepStarted:
		return fmt.Sprintf("step %s started (attempt %d)", ev.Step, ev.Attempt)
	case contracts.EventStepSucceeded:
		return fmt.Sprintf("step %s succeeded", ev.Step)
	case contracts.EventStepRetrying:
		return fmt.Sprintf("step %s failed (attempt %d)%s; retrying", ev.Step, ev.Attempt, stepErr())
	case contracts.EventStepFailed:
		return fmt.Sprintf("step %s failed (attempt %d)%s", ev.Step, ev.Attempt, stepErr())
	case contracts.EventStepSkipped:
		return fmt.Sprintf("step %s skipped", ev.Step)
	case contracts.EventCancelling:
		return fmt.Sprintf("job %s cancelling", ev.JobID)
	case contracts.EventFinished:
		line := fmt.Sprintf("job %s %s", ev.JobID, ev.State)
		if ev.Failure != nil {
			line += ": " + failureText(ev.Failure)
		}
		return line
	}
	return fmt.Sprintf("job %s: %s (%s)", ev.JobID, ev.Kind, ev.State)
}

// progressLine is e.g. "push 512 MiB / 1.0 GiB" or "pull app.log 3.0 KiB / 10 KiB".
func progressLine(p contracts.Progress) string {
	line := p.Step
	if p.File != "" {
		line += " " + p.File
	}
	line += " " + humanBytes(p.Done)
	if p.Total > 0 {
		line += " / " + humanBytes(p.Total)
	}
	return line
}

// humanBytes writes n in binary units: "999 B", "1.5 KiB", "512 MiB", "1.0 GiB".
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := -1
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v >= 100 {
		return fmt.Sprintf("%.0f %s", v, units[i])
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}
