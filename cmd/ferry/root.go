package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/svcenv"
	"github.com/ferrydesk/ferry/pkg/telemetry"
	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
)

// app is the state shared by the commands: where output goes and how to reach NATS.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	// stdin answers confirmations, asked only when stdinTerminal reports a terminal.
	stdin         io.Reader
	stdinTerminal func() bool

	nats         bus.Config
	passwordFile string // --nats-password-file
	timeout      time.Duration
	output       string
	// attemptLimit bounds one attempt of a request (defaultAttemptLimit; tests shorten it).
	attemptLimit time.Duration

	// devReady, when set, is told where `ferry dev` listens once it is up (tests).
	devReady func(natsURL, httpAddr string)
}

func newApp(stdout, stderr io.Writer, getenv func(string) string) *app {
	return &app{stdout: stdout, stderr: stderr, getenv: getenv, stdin: os.Stdin,
		stdinTerminal: func() bool { return term.IsTerminal(int(os.Stdin.Fd())) },
		attemptLimit:  defaultAttemptLimit}
}

// envFlags are flags that fall back to an environment variable when not given.
var envFlags = map[string]string{
	"nats-url":           "FERRY_NATS_URL",
	"nats-user":          "FERRY_NATS_USER",
	"nats-password":      "FERRY_NATS_PASSWORD",
	"nats-password-file": "FERRY_NATS_PASSWORD_FILE",
	"nats-creds":         "FERRY_NATS_CREDS",
	"nats-ca":            "FERRY_NATS_CA",
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "ferry",
		Short: "Remote maintenance for the helpdesk: updates, database and log backups over SSH",
		Long: `ferry runs the helpdesk's remote maintenance actions between the operator's
computer, the helpdesk server and customer servers, over SSH/SFTP.

Submit a job with 'ferry update' or 'ferry backup', follow it with --wait or
'ferry job watch', and run everything on one machine with 'ferry dev'. Manage the
hosts jobs name, their credentials and pinned host keys with 'ferry host'.

Exit codes: 0 success, 1 job failed or cancelled or an error, 2 usage or validation error.`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		Version:           telemetry.BuildVersion(),
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return a.resolveEnv(cmd) },
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError(err) })
	pf := root.PersistentFlags()
	pf.StringVar(&a.nats.URL, "nats-url", "nats://127.0.0.1:4222", "NATS server URL, comma-separated for a cluster (env FERRY_NATS_URL)")
	pf.StringVar(&a.nats.User, "nats-user", "", "NATS user (env FERRY_NATS_USER)")
	pf.StringVar(&a.nats.Password, "nats-password", "", "NATS password (env FERRY_NATS_PASSWORD; prefer the variable: flags show in ps)")
	pf.StringVar(&a.passwordFile, "nats-password-file", "", "file holding the NATS password (env FERRY_NATS_PASSWORD_FILE)")
	pf.StringVar(&a.nats.Creds, "nats-creds", "", "NATS credentials file (env FERRY_NATS_CREDS)")
	pf.StringVar(&a.nats.CAFile, "nats-ca", "", "CA certificate of the NATS server (env FERRY_NATS_CA)")
	pf.DurationVar(&a.timeout, "timeout", 10*time.Second, "deadline of each request to NATS, repeats while the API fails over included")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table or json")

	root.AddCommand(a.devCommand(), a.updateCommand(), a.backupCommand(), a.jobCommand(), a.hostCommand())
	return root
}

// resolveEnv fills every flag that was not given from its environment variable, and
// checks the global flags.
func (a *app) resolveEnv(cmd *cobra.Command) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		env, ok := envFlags[f.Name]
		if !ok || f.Changed || err != nil {
			return
		}
		if v := a.getenv(env); v != "" {
			if serr := f.Value.Set(v); serr != nil {
				err = usageError(fmt.Errorf("%s: %w", env, serr))
			}
		}
	})
	if err != nil {
		return err
	}
	if a.passwordFile != "" {
		if a.nats.Password != "" {
			return usageError(errors.New("--nats-password and --nats-password-file (or their variables): set one, not both"))
		}
		if a.nats.Password, err = svcenv.ReadSecretFile(a.passwordFile); err != nil {
			return usageError(fmt.Errorf("--nats-password-file: %w", err))
		}
	}
	if a.output != "table" && a.output != "json" {
		return usageError(fmt.Errorf("--output must be table or json, not %q", a.output))
	}
	if a.timeout <= 0 {
		return usageError(errors.New("--timeout must be positive"))
	}
	return nil
}

// connect dials NATS for one command.
func (a *app) connect(ctx context.Context) (*nats.Conn, error) {
	cfg := a.nats
	cfg.Name = "ferry-cli"
	cfg.ConnectTimeout = a.timeout
	nc, err := bus.Connect(ctx, cfg, nil)
	if err != nil {
		return nil, failure(err)
	}
	return nc, nil
}

// A request rides out a NATS node failing over by asking again. Every API call made
// through request is safe to repeat: a submit carries the job id the CLI chose before
// sending (the orchestrator answers a repeat with Duplicate), get and list read, and a
// cancel is deduplicated by its message id.
//
// What is retried: no responders (the orchestrator is reconnecting to another node)
// and an "unavailable" answer (JetStream briefly without a leader), after a short,
// growing pause; and an attempt whose answer does not come within attemptLimit (lost
// with a dying node). Everything else is final: invalid, not_found and other API
// answers, a closed connection, an interrupted command. (A subject the user may not
// publish to is reported by NATS only asynchronously: such a request goes unanswered
// and ends in "no answer", as it did before.)
const (
	// apiBudget is how long the orchestrator's API works on a request before it
	// answers, "unavailable" at worst (apiTimeout in services/orchestrator/api.go).
	apiBudget = 8 * time.Second
	// defaultAttemptLimit bounds one attempt: an answer that has not come a second
	// after the API's budget was lost, and only asking again can get one. A shorter
	// bound would cut off answers that are slow for good reasons (a submit riding out
	// an election, a long list) and queue the repeat behind the original, since the API
	// serves one request at a time. The price: within the default --timeout of 10 s a
	// lost answer leaves one last second for a repeat, enough for an API that answers
	// in milliseconds once the cluster has settled. The fast failures above are
	// retried throughout the budget.
	defaultAttemptLimit = apiBudget + time.Second
	retryFirst          = 100 * time.Millisecond
	retryMax            = 400 * time.Millisecond
)

// errUnavailable marks an answer of the API saying it is briefly unavailable.
var errUnavailable = errors.New("the ferry API is briefly unavailable")

// request sends req to an API subject and decodes the reply, within the request
// timeout, asking again while the API is failing over. correlation names the job the
// request is about, when there is one.
func request[Rep any](ctx context.Context, a *app, nc *nats.Conn, subject string, req any, correlation string) (Rep, error) {
	rep, _, err := requestRetrying[Rep](ctx, a, nc, subject, req, correlation)
	return rep, err
}

// requestRetrying is request that also says whether an earlier attempt may have
// reached the API and done its work: its answer was lost, or said "unavailable" after
// a store that may have landed. A submit repeated after that answers Duplicate for the
// job this very command sent. When the budget (--timeout) runs out, the last failure
// is reported: no responders, the API's "unavailable" answer (as the reply's Error), or
// no answer in time.
func requestRetrying[Rep any](ctx context.Context, a *app, nc *nats.Conn, subject string, req any, correlation string) (rep Rep, reached bool, err error) {
	msg, err := bus.Message(subject, req, correlation)
	if err != nil {
		return rep, false, err
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	noAnswer := fmt.Errorf("no answer on %s within %s", subject, a.timeout)
	// Told when the budget runs out: the latest failure, either why no reply came
	// (lastErr) or, when lastErr is nil, the API's "unavailable" answer.
	lastErr := noAnswer
	var unavailable Rep
	pause := retryFirst
	for {
		rep, err = attempt[Rep](ctx, nc, msg, a.attemptLimit)
		switch {
		case err == nil:
			return rep, reached, nil
		case errors.Is(err, errUnavailable):
			unavailable, lastErr, reached = rep, nil, true
		case errors.Is(err, nats.ErrNoResponders):
			lastErr = fmt.Errorf("no ferry API answers on %s: is the orchestrator (or 'ferry dev') running?", subject)
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			// This attempt's bound passed, not the budget: the request or its answer was
			// lost. Ask again at once; the bound was the wait.
			lastErr, reached = noAnswer, true
			continue
		case errors.Is(err, context.DeadlineExceeded):
			return unavailable, reached, lastErr
		default:
			return rep, reached, err
		}
		select {
		case <-ctx.Done():
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return rep, reached, fmt.Errorf("request on %s: %w", subject, ctx.Err())
			}
			return unavailable, reached, lastErr
		case <-time.After(pause):
		}
		pause = min(2*pause, retryMax)
	}
}

// attempt sends msg once and decodes the reply, waiting at most limit (and never past
// ctx). An answer that says the API is unavailable is returned with errUnavailable.
func attempt[Rep any](ctx context.Context, nc *nats.Conn, msg *nats.Msg, limit time.Duration) (Rep, error) {
	var rep Rep
	actx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	res, err := nc.RequestMsgWithContext(actx, msg)
	switch {
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, context.DeadlineExceeded):
		return rep, err
	case err != nil:
		return rep, fmt.Errorf("request on %s: %w", msg.Subject, err)
	}
	if err := json.Unmarshal(res.Data, &rep); err != nil {
		return rep, fmt.Errorf("undecodable reply on %s: %w", msg.Subject, err)
	}
	if apiErrorCode(res.Data) == "unavailable" {
		return rep, errUnavailable
	}
	return rep, nil
}

// apiErrorCode is the code of the error an API reply carries, "" for none: every
// reply type (SubmitReply, JobReply, ListReply) holds it as "error".
func apiErrorCode(data []byte) string {
	var reply struct {
		Error *contracts.APIError `json:"error"`
	}
	if json.Unmarshal(data, &reply) != nil || reply.Error == nil {
		return ""
	}
	return reply.Error.Code
}

// apiError turns the error half of an API reply into the command's error: invalid
// requests are usage errors (2), the rest failures (1).
func apiError(e *contracts.APIError) error {
	if e.Code == "invalid" {
		return usageError(e)
	}
	return failure(e)
}

// printJSON writes v as indented JSON.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// checkID refuses what cannot be a job id before anything is sent.
func checkID(id string) error {
	if !contracts.ValidID(id) {
		return usageError(&contracts.ValidationError{Fields: []contracts.FieldError{{
			Field: "id", Problem: fmt.Sprintf("%q is not a job id (1–64 letters, digits, '-' or '_')", id),
		}}})
	}
	return nil
}
