package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/spf13/cobra"
)

func (a *app) jobCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job",
		Short: "List, show, watch and cancel jobs",
	}
	cmd.AddCommand(a.jobListCommand(), a.jobGetCommand(), a.jobWatchCommand(), a.jobCancelCommand())
	return cmd
}

func (a *app) jobListCommand() *cobra.Command {
	var req contracts.ListRequest
	var state, act string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List jobs, newest first",
		Args:  cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			req.State, req.Action = contracts.JobState(state), contracts.Action(act)
			if req.Limit < 0 {
				return usageError(fmt.Errorf("--limit must not be negative"))
			}
			ctx := cmd.Context()
			nc, err := a.connect(ctx)
			if err != nil {
				return err
			}
			defer nc.Close()
			rep, err := request[contracts.ListReply](ctx, a, nc, contracts.SubjectAPIList, req, "")
			if err != nil {
				return err
			}
			if rep.Error != nil {
				return apiError(rep.Error)
			}
			if a.output == "json" {
				if rep.Jobs == nil {
					rep.Jobs = []contracts.JobSummary{}
				}
				return a.printJSON(rep.Jobs)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tACTION\tSTATE\tSTEP\tCREATED\tUPDATED\tFAILURE")
			for _, j := range rep.Jobs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, j.Action, j.State, dash(j.Step),
					when(j.Created), ago(j.Updated), failureText(j.Failure))
			}
			return tw.Flush()
		}),
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", "", "only jobs in this state (pending, running, succeeded, failed, cancelled, rejected…)")
	f.StringVar(&act, "action", "", "only jobs of this action (update, db-backup, log-backup)")
	f.IntVar(&req.Limit, "limit", 0, "at most this many jobs (0: the server's default)")
	return cmd
}

func (a *app) jobGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show a job and its steps",
		Args:  cobra.ExactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := checkID(args[0]); err != nil {
				return err
			}
			ctx := cmd.Context()
			nc, err := a.connect(ctx)
			if err != nil {
				return err
			}
			defer nc.Close()
			rep, err := request[contracts.JobReply](ctx, a, nc, contracts.SubjectAPIGet, contracts.GetRequest{JobID: args[0]}, args[0])
			if err != nil {
				return err
			}
			if rep.Error != nil {
				return apiError(rep.Error)
			}
			if rep.Job == nil {
				return fmt.Errorf("the API answered without a job")
			}
			if a.output == "json" {
				return a.printJSON(rep.Job)
			}
			return a.printJob(rep.Job)
		}),
	}
}

func (a *app) printJob(j *contracts.Job) error {
	now := time.Now()
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "job:\t%s\n", j.ID)
	fmt.Fprintf(tw, "action:\t%s\n", j.Action)
	fmt.Fprintf(tw, "state:\t%s\n", j.State)
	if j.TraceID != "" {
		fmt.Fprintf(tw, "trace:\t%s\n", j.TraceID)
	}
	fmt.Fprintf(tw, "created:\t%s\n", when(j.Created))
	fmt.Fprintf(tw, "updated:\t%s (%s)\n", when(j.Updated), ago(j.Updated))
	if !j.Finished.IsZero() {
		fmt.Fprintf(tw, "finished:\t%s (took %s)\n", when(j.Finished), fmtDuration(j.Finished.Sub(j.Created)))
	}
	var total int64
	for _, s := range j.Steps {
		total += s.Bytes
	}
	if total > 0 {
		fmt.Fprintf(tw, "bytes:\t%s\n", humanBytes(total))
	}
	if j.Failure != nil {
		fmt.Fprintf(tw, "failure:\t%s\n", failureText(j.Failure))
	}
	if j.CancelRequested {
		fmt.Fprintf(tw, "cancel:\trequested%s\n", prefixed(": ", j.CancelReason))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	// STARTED is the first attempt's start, ENDED the step's end; WALL the time between
	// them (retries and their waits included; for a running step, so far); WORK the
	// time its attempts took in the workers; RATE its bytes over WORK.
	tw = tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tSERVICE\tOP\tSTATE\tATTEMPTS\tSTARTED\tENDED\tWALL\tWORK\tBYTES\tRATE\tERROR")
	for _, s := range j.Steps {
		name := s.Name
		if s.Always {
			name += " (always)"
		}
		c := stepColumns(s, now)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, s.Service, s.Op, s.State, s.Attempt,
			c.started, c.ended, c.wall, c.work, c.bytes, c.rate, c.err)
	}
	return tw.Flush()
}

type stepCols struct{ started, ended, wall, work, bytes, rate, err string }

// stepColumns formats a step's timings and bytes for the job table.
func stepColumns(s contracts.Step, now time.Time) stepCols {
	c := stepCols{started: "-", ended: "-", wall: "-", work: "-", bytes: "-", rate: "-", err: "-"}
	if !s.Started.IsZero() {
		c.started = s.Started.Local().Format("15:04:05.000")
	}
	if !s.Ended.IsZero() {
		c.ended = s.Ended.Local().Format("15:04:05.000")
	}
	switch {
	case !s.Started.IsZero() && !s.Ended.IsZero():
		c.wall = fmtDuration(s.Ended.Sub(s.Started))
	case !s.Started.IsZero() && !s.State.Final():
		c.wall = fmtDuration(now.Sub(s.Started)) + " so far"
	}
	if s.Elapsed > 0 {
		c.work = fmtDuration(s.Elapsed)
	}
	if s.Bytes > 0 {
		c.bytes = humanBytes(s.Bytes)
		if s.Elapsed > 0 {
			c.rate = humanBytes(int64(float64(s.Bytes)/s.Elapsed.Seconds())) + "/s"
		}
	}
	if s.Error != nil {
		c.err = s.Error.Code + ": " + s.Error.Message
	}
	return c
}

func (a *app) jobWatchCommand() *cobra.Command {
	var limit time.Duration
	cmd := &cobra.Command{
		Use:   "watch ID",
		Short: "Print a job's events and progress until it ends; exit 1 unless it succeeded",
		Long: `Prints every event of the job from its start, and the progress of long steps,
until the job finishes. -o json prints each event as one JSON line.`,
		Args: cobra.ExactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := checkID(args[0]); err != nil {
				return err
			}
			ctx := cmd.Context()
			nc, err := a.connect(ctx)
			if err != nil {
				return err
			}
			defer nc.Close()
			return a.watch(ctx, nc, args[0], limit)
		}),
	}
	cmd.Flags().DurationVar(&limit, "wait-timeout", 0, "give up after this long (0: until the job ends)")
	return cmd
}

func (a *app) jobCancelCommand() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a job (its closing steps still run)",
		Args:  cobra.ExactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			req := contracts.CancelRequest{Schema: contracts.SchemaCancel, JobID: args[0], Reason: reason}
			if err := req.Validate(); err != nil {
				return usageError(err)
			}
			ctx := cmd.Context()
			nc, err := a.connect(ctx)
			if err != nil {
				return err
			}
			defer nc.Close()
			rep, err := request[contracts.JobReply](ctx, a, nc, contracts.SubjectAPICancel, req, req.JobID)
			if err != nil {
				return err
			}
			if rep.Error != nil {
				return apiError(rep.Error)
			}
			if a.output == "json" {
				return a.printJSON(rep.Job)
			}
			state := "unknown"
			if rep.Job != nil {
				state = string(rep.Job.State)
			}
			fmt.Fprintf(a.stdout, "cancel requested: job %s is %s\n", req.JobID, state)
			return nil
		}),
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the job is cancelled (kept in the job record)")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func prefixed(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

func failureText(f *contracts.JobFailure) string {
	if f == nil {
		return "-"
	}
	return strings.TrimSpace(fmt.Sprintf("step %s: %s: %s", f.Step, f.Code, f.Message))
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}
