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

	// devReady, when set, is told where `ferry dev` listens once it is up (tests).
	devReady func(natsURL, httpAddr string)
}

func newApp(stdout, stderr io.Writer, getenv func(string) string) *app {
	return &app{stdout: stdout, stderr: stderr, getenv: getenv, stdin: os.Stdin,
		stdinTerminal: func() bool { return term.IsTerminal(int(os.Stdin.Fd())) }}
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
	pf.DurationVar(&a.timeout, "timeout", 10*time.Second, "deadline of each request to NATS")
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

// request sends req to an API subject and decodes the reply, within the request
// timeout. correlation names the job the request is about, when there is one.
func request[Rep any](ctx context.Context, a *app, nc *nats.Conn, subject string, req any, correlation string) (Rep, error) {
	var rep Rep
	msg, err := bus.Message(subject, req, correlation)
	if err != nil {
		return rep, err
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	res, err := nc.RequestMsgWithContext(ctx, msg)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return rep, fmt.Errorf("no ferry API answers on %s: is the orchestrator (or 'ferry dev') running?", subject)
	case errors.Is(err, context.DeadlineExceeded):
		return rep, fmt.Errorf("no answer on %s within %s", subject, a.timeout)
	case err != nil:
		return rep, fmt.Errorf("request on %s: %w", subject, err)
	}
	if err := json.Unmarshal(res.Data, &rep); err != nil {
		return rep, fmt.Errorf("undecodable reply on %s: %w", subject, err)
	}
	return rep, nil
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
