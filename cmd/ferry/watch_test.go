package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
)

// playJob feeds a watcher the events of a job with one pushed file: the step lines,
// six progress reports of push over 5 s (the last one twice), then the end.
func playJob(t *testing.T, w *watcher) {
	t.Helper()
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	jobEv := func(kind contracts.JobEventKind, step string, at time.Duration) {
		data, _ := json.Marshal(contracts.JobEvent{JobID: "j1", Kind: kind, Step: step, Attempt: 1, Action: contracts.ActionUpdate,
			State: contracts.JobRunning, Time: t0.Add(at)})
		if kind == contracts.EventFinished {
			data, _ = json.Marshal(contracts.JobEvent{JobID: "j1", Kind: kind, State: contracts.JobSucceeded, Time: t0.Add(at)})
		}
		if done, err := w.event(contracts.JobEventSubject("j1"), data); done != (kind == contracts.EventFinished) || err != nil {
			t.Fatalf("%s: done %v, err %v", kind, done, err)
		}
	}
	progress := func(done int64, at time.Duration) {
		data, _ := json.Marshal(contracts.Progress{JobID: "j1", Step: "push", Attempt: 1, File: "update-j1.tar.zst",
			Done: done, Total: 8 << 20, Time: t0.Add(at)})
		w.event(contracts.ProgressSubject("j1"), data)
	}
	jobEv(contracts.EventAccepted, "", 0)
	jobEv(contracts.EventStepStarted, "push", 100*time.Millisecond)
	for i, at := range []time.Duration{time.Second, 1500 * time.Millisecond, 3100 * time.Millisecond, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		progress(min(int64(i+1)<<21, 8<<20), at)
	}
	jobEv(contracts.EventStepSucceeded, "push", 5600*time.Millisecond)
	jobEv(contracts.EventFinished, "", 6*time.Second)
}

func TestWatchPlain(t *testing.T) {
	var out syncBuffer
	a := newApp(&out, &syncBuffer{}, func(string) string { return "" })
	a.output = "table"
	con := newConsole(&out, false)
	playJob(t, newWatcher(a, con, "j1"))
	want := []string{
		"job j1 accepted (update)",
		"step push started (attempt 1)",
		"push update-j1.tar.zst 2.0 MiB / 8.0 MiB", // first report
		"push update-j1.tar.zst 6.0 MiB / 8.0 MiB", // 2 s after the last line
		"push update-j1.tar.zst 8.0 MiB / 8.0 MiB", // done, once
		"step push succeeded in 5.5s",
		"job j1 succeeded",
	}
	if got := strings.TrimSpace(out.String()); got != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

func TestWatchJSON(t *testing.T) {
	var out syncBuffer
	a := newApp(&out, &syncBuffer{}, func(string) string { return "" })
	a.output = "json"
	playJob(t, newWatcher(a, newConsole(&out, false), "j1"))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4+6 {
		t.Fatalf("%d lines:\n%s", len(lines), out.String())
	}
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Errorf("not JSON: %q", l)
		}
	}
}

var ansi = regexp.MustCompile(`\r?\x1b\[[0-9]*[AJ]`)

func TestWatchTerminal(t *testing.T) {
	var out syncBuffer
	a := newApp(&out, &syncBuffer{}, func(string) string { return "" })
	a.output = "table"
	con := newConsole(&out, true)
	w := newWatcher(a, con, "j1")
	con.SetLive(w.live)
	playJob(t, w)
	con.SetLive(nil)
	raw := out.String()
	// Live lines: a bar per file and the job's line, redrawn in place.
	for _, want := range []string{
		"  push update-j1.tar.zst [", "] 4.0 MiB / 8.0 MiB  50%", "job j1 running · push · 4.0 MiB / 8.0 MiB",
		"\r\x1b[2A\x1b[J",
	} {
		if !strings.Contains(raw, want) {
			t.Errorf("output lacks %q:\n%q", want, raw)
		}
	}
	// What stays on screen once the live lines are erased: the event lines only.
	final := screen(raw)
	want := "job j1 accepted (update)\nstep push started (attempt 1)\nstep push succeeded in 5.5s\njob j1 succeeded\n"
	if final != want {
		t.Errorf("screen:\n%s\nwant:\n%s", final, want)
	}
}

// screen replays the few escape sequences the console writes on a simple line screen.
func screen(raw string) string {
	var lines []string
	cur := ""
	for len(raw) > 0 {
		if loc := ansi.FindStringIndex(raw); loc != nil && loc[0] == 0 {
			seq := raw[:loc[1]]
			if strings.HasSuffix(seq, "A") {
				var n int
				for _, c := range strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(seq, "\r"), "\x1b["), "A") {
					n = n*10 + int(c-'0')
				}
				lines = lines[:len(lines)-n]
			}
			raw = raw[loc[1]:]
			continue
		}
		c := raw[0]
		raw = raw[1:]
		if c == '\n' {
			lines = append(lines, cur)
			cur = ""
		} else {
			cur += string(c)
		}
	}
	if len(lines) == 0 {
		return cur
	}
	return strings.Join(lines, "\n") + "\n" + cur
}

func TestLiveLines(t *testing.T) {
	a := newApp(&syncBuffer{}, &syncBuffer{}, func(string) string { return "" })
	w := newWatcher(a, newConsole(&syncBuffer{}, true), "j1")
	w.step = "pull"
	for i := range 7 {
		w.progress(contracts.Progress{Step: "pull", Attempt: 1, File: "app.log." + string(rune('0'+i)), Done: 10, Total: 100})
	}
	lines := w.live(80)
	if len(lines) != maxFileLines+2 || lines[maxFileLines] != "  … and 3 more files" || !strings.HasPrefix(lines[len(lines)-1], "job j1 running · pull · 70 B / 700 B") {
		t.Errorf("live lines:\n%s", strings.Join(lines, "\n"))
	}
	if l := fileLine(&fileProgress{step: "push", file: "x", done: 1, total: 4}, 200); !strings.Contains(l, "[=======>") || !strings.HasSuffix(l, " 1 B / 4 B  25%") {
		t.Errorf("fileLine = %q", l)
	}
	if got := truncate("ääääää", 4); got != "äää…" {
		t.Errorf("truncate = %q", got)
	}
	for d, want := range map[time.Duration]string{850 * time.Millisecond: "850ms", 4200 * time.Millisecond: "4.2s", 192 * time.Second: "3m12s"} {
		if got := fmtDuration(d); got != want {
			t.Errorf("fmtDuration(%s) = %q", d, got)
		}
	}
}
