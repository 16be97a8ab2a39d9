package main

import (
	"fmt"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/google/uuid"
	"github.com/spf13/cobra"
)

// submitFlags are the flags every submitting command has.
type submitFlags struct {
	id          string
	ticket      string
	requestedBy string
	wait        bool
	waitTimeout time.Duration
}

func (a *app) addSubmitFlags(cmd *cobra.Command, s *submitFlags) {
	f := cmd.Flags()
	f.StringVar(&s.id, "id", "", "job id: submitting the same id again gives the same job (default: a new UUID)")
	f.StringVar(&s.ticket, "ticket", "", "helpdesk ticket of the job")
	f.StringVar(&s.requestedBy, "requested-by", a.getenv("USER"), "operator who asked for the job")
	f.BoolVar(&s.wait, "wait", false, "watch the job until it ends; exit 1 unless it succeeded")
	f.DurationVar(&s.waitTimeout, "wait-timeout", 0, "give up waiting after this long (0: wait until the job ends)")
}

// submit validates req locally, sends it to the API, prints the job id and, with
// --wait, watches the job to its end.
func (a *app) submit(cmd *cobra.Command, s *submitFlags, req contracts.JobRequest) error {
	req.Schema = contracts.SchemaJobRequest
	req.ID = s.id
	if req.ID == "" {
		req.ID = uuid.NewString()
	}
	req.Ticket, req.RequestedBy = s.ticket, s.requestedBy
	if err := req.Validate(); err != nil {
		return usageError(err)
	}
	ctx := cmd.Context()
	nc, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	rep, reached, err := requestRetrying[contracts.SubmitReply](ctx, a, nc, contracts.SubjectAPISubmit, req, req.ID)
	if err != nil {
		return err
	}
	if rep.Error != nil {
		return apiError(rep.Error)
	}
	if a.output == "json" && !s.wait {
		return a.printJSON(rep)
	}
	if a.output == "table" {
		fmt.Fprintln(a.stdout, rep.JobID)
	}
	if rep.Duplicate {
		a.reportDuplicate(rep.JobID, reached)
	}
	if !s.wait {
		return nil
	}
	return a.watch(ctx, nc, rep.JobID, s.waitTimeout)
}

// reportDuplicate tells the operator that the API knew job id already. Only when no
// earlier attempt of this command may have reached the API is that certainly an old
// job; after a lost or "unavailable" answer the earlier attempt may have submitted it.
func (a *app) reportDuplicate(id string, reached bool) {
	if !reached {
		fmt.Fprintf(a.stderr, "ferry: job %s existed already; nothing new was submitted\n", id)
		return
	}
	fmt.Fprintf(a.stderr, "ferry: job %s is submitted (a repeated request found it: an unanswered try got through, or it existed already)\n", id)
}

func (a *app) updateCommand() *cobra.Command {
	var (
		s submitFlags
		u contracts.UpdateRequest
	)
	cmd := &cobra.Command{
		Use:   "update --from HOST --files PATH... --to HOST --dest DIR",
		Short: "Push update files from the operator's computer to a customer server",
		Long: `Copies update files from the operator's computer (--from) to a customer server
(--to) into --dest: they are archived with a SHA-256 manifest, pushed under a
temporary name, verified and renamed into place. Hosts are names from the inventory.

--files may be repeated; arguments after the flags are files too.`,
		Example: `  ferry update --from op-pc --to customer-1 --dest /opt/app/update --files 'update/*.jar' --wait
  ferry update --from op-pc --to customer-1 --dest /opt/app --unpack --files a.jar b.jar`,
		RunE: action(func(cmd *cobra.Command, args []string) error {
			u.Files = append(u.Files, args...)
			return a.submit(cmd, &s, contracts.JobRequest{Action: contracts.ActionUpdate, Update: &u})
		}),
	}
	f := cmd.Flags()
	f.StringVar(&u.From, "from", "", "operator's computer (inventory host)")
	f.StringArrayVar(&u.Files, "files", nil, "file, directory or glob on the operator's computer, relative to the home directory (repeatable)")
	f.StringVar(&u.To, "to", "", "customer server (inventory host)")
	f.StringVar(&u.Dest, "dest", "", "destination directory on the customer server")
	f.BoolVar(&u.Unpack, "unpack", false, "deliver the file tree instead of the archive and its manifest")
	f.StringVar(&u.Compression, "compression", "", "archive compression: zstd (default) or gzip")
	a.addSubmitFlags(cmd, &s)
	return cmd
}

func (a *app) backupCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Back up a customer's database or logs to the operator's computer",
	}
	cmd.AddCommand(a.backupDBCommand(), a.backupLogsCommand())
	return cmd
}

func (a *app) backupDBCommand() *cobra.Command {
	var (
		s submitFlags
		d contracts.DBBackupRequest
	)
	cmd := &cobra.Command{
		Use:     "db --from HOST --db NAME --to HOST",
		Short:   "Dump a customer's database through an SSH tunnel and deliver it to the operator",
		Example: `  ferry backup db --from customer-1 --db shop --db-user backup --db-credential customer-1-db --to op-pc --keep 5 --wait`,
		Args:    cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			return a.submit(cmd, &s, contracts.JobRequest{Action: contracts.ActionDBBackup, DBBackup: &d})
		}),
	}
	f := cmd.Flags()
	f.StringVar(&d.From, "from", "", "customer server the database runs on or behind (inventory host)")
	f.StringVar(&d.Database, "db", "", "database name")
	f.StringVar(&d.Engine, "engine", "", "postgres (default) or mysql")
	f.StringVar(&d.DBHost, "db-host", "", "database host as seen from the customer server (default 127.0.0.1)")
	f.IntVar(&d.DBPort, "db-port", 0, "database port (default: the engine's)")
	f.StringVar(&d.DBUser, "db-user", "", "database user")
	f.StringVar(&d.DBCredential, "db-credential", "", "reference of the database password in the secrets directory")
	f.StringVar(&d.To, "to", "", "operator's computer (inventory host)")
	f.IntVar(&d.Keep, "keep", 0, "keep the newest N backups of this database on the operator's computer (0: all)")
	a.addSubmitFlags(cmd, &s)
	return cmd
}

func (a *app) backupLogsCommand() *cobra.Command {
	var (
		s       submitFlags
		l       contracts.LogBackupRequest
		since   time.Duration
		maxSize string
	)
	cmd := &cobra.Command{
		Use:   "logs --from HOST --paths GLOB... --to HOST",
		Short: "Collect a customer's log files and deliver a bundle to the operator",
		Long: `Collects log files matching --paths on the customer server (--from), archives
them with a manifest and delivers the bundle to the operator's computer (--to).

--paths may be repeated; arguments after the flags are globs too.`,
		Example: `  ferry backup logs --from customer-1 --paths '/var/log/app/*.log*' --since 48h --max-size 500MiB --to op-pc --wait`,
		RunE: action(func(cmd *cobra.Command, args []string) error {
			l.Paths = append(l.Paths, args...)
			l.Since = contracts.Duration(since)
			if maxSize != "" {
				n, err := contracts.ParseSize(maxSize)
				if err != nil {
					return usageError(&contracts.ValidationError{Fields: []contracts.FieldError{{Field: "log_backup.max_size", Problem: err.Error()}}})
				}
				l.MaxSize = contracts.Size(n)
			}
			return a.submit(cmd, &s, contracts.JobRequest{Action: contracts.ActionLogBackup, LogBackup: &l})
		}),
	}
	f := cmd.Flags()
	f.StringVar(&l.From, "from", "", "customer server (inventory host)")
	f.StringArrayVar(&l.Paths, "paths", nil, "glob of log files on the customer server (repeatable)")
	f.DurationVar(&since, "since", 0, "only files modified within this long (e.g. 48h; 0: all)")
	f.StringVar(&maxSize, "max-size", "", "cap on the bytes collected (e.g. 500MiB; empty: no cap)")
	f.BoolVar(&l.AllowEmpty, "allow-empty", false, "deliver an empty bundle when nothing matches instead of failing")
	f.StringVar(&l.To, "to", "", "operator's computer (inventory host)")
	f.IntVar(&l.Keep, "keep", 0, "keep the newest N log bundles of this customer (0: all)")
	a.addSubmitFlags(cmd, &s)
	return cmd
}
