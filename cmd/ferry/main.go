// Command ferry is the command line of ferry: it submits jobs (update, database and log
// backups), lists, shows, watches and cancels them, and runs everything in one process
// for development (`ferry dev`).
//
// Exit codes: 0 success, 1 a job failed, was cancelled, or an error occurred, 2 a usage
// or validation error.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// exitError carries the exit code of a failed command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageError(err error) error { return &exitError{code: exitUsage, err: err} }
func failure(err error) error    { return &exitError{code: exitFail, err: err} }

// action turns a command's error into an exit code: errors that carry none are
// failures (1). Errors cobra returns itself (unknown flags, wrong arguments) are
// usage errors (2).
func action(f func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := f(cmd, args)
		var ee *exitError
		if err != nil && !errors.As(err, &ee) {
			return failure(err)
		}
		return err
	}
}

// run executes the command line args and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	return newApp(stdout, stderr, getenv).run(ctx, args)
}

// run executes the command line args with a's streams and returns the exit code.
func (a *app) run(ctx context.Context, args []string) int {
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	code := exitUsage
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	printError(a.stderr, cmd, err)
	if code == exitUsage && ee == nil {
		fmt.Fprintf(a.stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}

// printError writes err for people; the fields of a validation or API error each get a
// line, with the flag that sets them where the command has one.
func printError(w io.Writer, cmd *cobra.Command, err error) {
	var (
		ve     *contracts.ValidationError
		ae     *contracts.APIError
		fields []contracts.FieldError
	)
	switch {
	case errors.As(err, &ve):
		fmt.Fprintln(w, "ferry: invalid request:")
		fields = ve.Fields
	case errors.As(err, &ae):
		fmt.Fprintf(w, "ferry: %s", ae.Message)
		if ae.Code != "" {
			fmt.Fprintf(w, " (%s)", ae.Code)
		}
		fmt.Fprintln(w)
		fields = ae.Fields
	default:
		fmt.Fprintln(w, "ferry:", err)
		return
	}
	for _, f := range fields {
		fmt.Fprintf(w, "  %s%s: %s\n", f.Field, flagHint(cmd, f.Field), f.Problem)
	}
}

// flagHint names the flag of cmd that sets a request field: "update.files[2]" → " (--files)".
func flagHint(cmd *cobra.Command, field string) string {
	if cmd == nil {
		return ""
	}
	name := field
	if i := strings.IndexByte(name, '['); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		name = name[i+1:]
	}
	name = strings.ReplaceAll(name, "_", "-")
	if name == "database" {
		name = "db"
	}
	if cmd.Flags().Lookup(name) == nil {
		// A list field set by a repeatable flag: "roots[0]" → --root, "host_keys[1]" → --host-key.
		if name = strings.TrimSuffix(name, "s"); cmd.Flags().Lookup(name) == nil {
			return ""
		}
	}
	return " (--" + name + ")"
}
