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
// usage error (2) for a rejected request. On a terminal, progress is shown as live
// lines (one per file and one for the job); elsewhere as a line every few seconds per
// file; with -o json as the raw events only.
func (a *app) watch(ctx context.Context, nc *nats.Conn, job string, limit time.Duration) error {
	con := newConsole(a.stdout, a.output != "json" && isTerminal(a.stdout))
	defer con.SetLive(nil)
	return a.follow(ctx, nc, job, limit, con)
}

// follow is watch writing through con, which `ferry dev` shares with its logs.
func (a *app) follow(ctx context.Context, nc *nats.Conn, job string, limit time.Duration, con *console) error {
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
	w := newWatcher(a, con, job)
	con.SetLive(w.live)
	defer con.SetLive(nil)
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
		done, err := w.event(msg.Subject(), msg.Data())
		if done {
			return err
		}
	}
}

// plainProgressEvery spaces the progress lines of one file when there is no terminal.
const plainProgressEvery = 2 * time.Second

// watcher turns a job's events into output: event lines with step durations, and
// progress as live lines (terminal), periodic lines (plain) or JSON.
type watcher struct {
	a     *app
	con   *console
	job   string
	began time.Time

	// Guarded by con.mu (changed inside con.Update, read by live).
	step    string               // running step
	attempt int                  // its attempt
	started map[string]time.Time // step → start of its current attempt (event time)
	files   []*fileProgress      // progress of running steps, in order of appearance
	ended   bool

	plain map[string]*plainState // plain mode: per step attempt and file
}

// fileProgress is the latest progress of one file of a step attempt.
type fileProgress struct {
	step        string
	attempt     int
	file        string
	done, total int64
	first       time.Time // wall clock, for the rate
}

func newWatcher(a *app, con *console, job string) *watcher {
	return &watcher{a: a, con: con, job: job, began: time.Now(), started: map[string]time.Time{}, plain: map[string]*plainState{}}
}

// event handles one message of the watch filter; done is true with the job's last
// event, and err then carries the outcome.
func (w *watcher) event(subject string, data []byte) (done bool, err error) {
	// ferry.v1.evt.<kind>.<job>
	parts := strings.Split(subject, ".")
	if len(parts) != 5 {
		return false, nil
	}
	switch parts[3] {
	case "job":
		var ev contracts.JobEvent
		if err := json.Unmarshal(data, &ev); err != nil {
			fmt.Fprintf(w.a.stderr, "ferry: undecodable job event: %v\n", err)
			return false, nil
		}
		w.con.PrintFunc(func() string {
			line := w.jobEvent(ev, jobEventLine(ev))
			if w.a.output == "json" {
				return string(compact(data))
			}
			return line
		})
		return outcome(ev)
	case "progress":
		var p contracts.Progress
		if err := json.Unmarshal(data, &p); err != nil {
			return false, nil
		}
		switch {
		case w.a.output == "json":
			w.con.Println(string(compact(data)))
		case w.con.tty:
			w.con.Update(func() { w.progress(p) })
		default:
			if w.plainDue(p) {
				w.con.Println(progressLine(p))
			}
		}
	}
	// Step events repeat what the job events say, for the orchestrator.
	return false, nil
}

// jobEvent records ev and returns line with the step's duration added.
func (w *watcher) jobEvent(ev contracts.JobEvent, line string) string {
	took := func() string {
		start, ok := w.started[ev.Step]
		if !ok || start.IsZero() || ev.Time.IsZero() || ev.Time.Before(start) {
			return ""
		}
		return fmtDuration(ev.Time.Sub(start))
	}
	switch ev.Kind {
	case contracts.EventStepStarted:
		w.started[ev.Step] = ev.Time
		w.step, w.attempt = ev.Step, ev.Attempt
		w.dropFiles(func(f *fileProgress) bool { return f.step == ev.Step && f.attempt < ev.Attempt })
	case contracts.EventStepSucceeded:
		if d := took(); d != "" {
			line += " in " + d
		}
		w.stepEnded(ev.Step)
	case contracts.EventStepFailed, contracts.EventStepRetrying:
		if d := took(); d != "" {
			line += " (after " + d + ")"
		}
		w.stepEnded(ev.Step)
	case contracts.EventStepSkipped:
		w.stepEnded(ev.Step)
	case contracts.EventFinished, contracts.EventRejected:
		w.ended = true
		w.files = nil
	}
	return line
}

func (w *watcher) stepEnded(step string) {
	w.dropFiles(func(f *fileProgress) bool { return f.step == step })
	if w.step == step {
		w.step = ""
	}
}

func (w *watcher) dropFiles(drop func(*fileProgress) bool) {
	kept := w.files[:0]
	for _, f := range w.files {
		if !drop(f) {
			kept = append(kept, f)
		}
	}
	w.files = kept
}

// progress records p for the live lines.
func (w *watcher) progress(p contracts.Progress) {
	for _, f := range w.files {
		if f.step == p.Step && f.attempt == p.Attempt && f.file == p.File {
			f.done, f.total = p.Done, p.Total
			return
		}
	}
	w.files = append(w.files, &fileProgress{step: p.Step, attempt: p.Attempt, file: p.File, done: p.Done, total: p.Total, first: time.Now()})
}

// plainDue reports whether p gets a line without a terminal: a file's first report,
// its last (done = total) once, and one every plainProgressEvery between, by the times
// the reports carry (so that a replay prints what a live watch printed).
func (w *watcher) plainDue(p contracts.Progress) bool {
	key := fmt.Sprintf("%s\x00%d\x00%s", p.Step, p.Attempt, p.File)
	complete := p.Total > 0 && p.Done >= p.Total
	st, seen := w.plain[key]
	switch {
	case !seen:
		w.plain[key] = &plainState{last: p.Time, complete: complete}
		return true
	case st.complete:
		return false
	case complete || !p.Time.IsZero() && !st.last.IsZero() && p.Time.Sub(st.last) >= plainProgressEvery:
		st.last, st.complete = p.Time, complete
		return true
	}
	return false
}

// plainState is what plain mode printed of one file.
type plainState struct {
	last     time.Time // event time of the last line
	complete bool      // the final line was printed
}

// maxFileLines caps the live file lines; the rest are summed up in one line.
const maxFileLines = 4

// live renders the live lines: one per file in progress, then the job's.
func (w *watcher) live(width int) []string {
	if w.ended {
		return nil
	}
	var lines []string
	var shown, hidden int
	var done, total int64
	var first time.Time
	for _, f := range w.files {
		done += f.done
		total += f.total
		if first.IsZero() || f.first.Before(first) {
			first = f.first
		}
		complete := f.total > 0 && f.done >= f.total
		if shown >= maxFileLines || complete && len(w.files) > maxFileLines {
			hidden++
			continue
		}
		shown++
		lines = append(lines, fileLine(f, width))
	}
	if hidden > 0 {
		lines = append(lines, fmt.Sprintf("  … and %d more files", hidden))
	}
	job := "job " + w.job + " running"
	if w.step != "" {
		job += " · " + w.step
		if w.attempt > 1 {
			job += fmt.Sprintf(" (attempt %d)", w.attempt)
		}
	}
	if len(w.files) > 0 {
		job += " · " + humanBytes(done)
		if total > 0 {
			job += " / " + humanBytes(total)
		}
		if secs := time.Since(first).Seconds(); secs >= 0.5 {
			job += " · " + humanBytes(int64(float64(done)/secs)) + "/s"
		}
	}
	job += " · " + fmtDuration(time.Since(w.began).Truncate(100*time.Millisecond))
	return append(lines, job)
}

// fileLine is e.g. "  push app.tar.zst [=========>          ] 4.0 MiB / 8.0 MiB  50%".
func fileLine(f *fileProgress, width int) string {
	name := f.file
	if name == "" {
		name = "(all files)"
	}
	head := "  " + f.step + " " + name
	if f.total <= 0 {
		return head + "  " + humanBytes(f.done)
	}
	frac := float64(f.done) / float64(f.total)
	frac = min(max(frac, 0), 1)
	tail := fmt.Sprintf(" %s / %s %3.0f%%", humanBytes(f.done), humanBytes(f.total), frac*100)
	barWidth := min(30, width-len(head)-len(tail)-4)
	if barWidth < 10 {
		return head + tail
	}
	fill := int(frac * float64(barWidth))
	bar := strings.Repeat("=", fill)
	if fill < barWidth {
		bar += ">" + strings.Repeat(" ", barWidth-fill-1)
	}
	return head + " [" + bar + "]" + tail
}

// fmtDuration is a short duration for people: "850ms", "4.2s", "3m12s".
func fmtDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return d.Round(time.Second).String()
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
