package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
)

func (a *app) hostCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Manage the host inventory: addresses, logins, credentials, pinned host keys",
		Long: `The host inventory (the hosts bucket of JetStream) maps the host names jobs use to
an address, port, login user, credential reference and pinned host keys. These
commands change the bucket directly: they are an administrator's tool.

A credential reference names a directory below the services' secrets directory
(FERRY_SECRETS_DIR); no secret is ever stored in the inventory.`,
	}
	cmd.AddCommand(a.hostAddCommand(), a.hostListCommand(), a.hostGetCommand(),
		a.hostRemoveCommand(), a.hostTrustCommand())
	return cmd
}

// openInventory connects to NATS and binds the hosts bucket; close releases both.
func (a *app) openInventory(ctx context.Context) (store *inventory.Store, closeFn func(), err error) {
	nc, err := a.connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, failure(err)
	}
	octx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	store, err = inventory.Open(octx, js)
	if err != nil {
		nc.Close()
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w: is the orchestrator (or 'ferry dev') running? It creates the buckets", err)
		}
		return nil, nil, failure(err)
	}
	return store, nc.Close, nil
}

// withTimeout bounds one inventory operation by --timeout.
func (a *app) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.timeout)
}

// checkHostName refuses what cannot be an inventory name before anything is sent.
func checkHostName(name string) error {
	if !contracts.ValidID(name) {
		return usageError(&contracts.ValidationError{Fields: []contracts.FieldError{{
			Field: "name", Problem: fmt.Sprintf("%q is not a host name (1–64 letters, digits, '-' or '_')", name),
		}}})
	}
	return nil
}

// hostError maps inventory errors to exit codes: invalid hosts are usage errors (2).
func hostError(err error) error {
	var ve *contracts.ValidationError
	if errors.As(err, &ve) {
		return usageError(err)
	}
	return err
}

func (a *app) hostAddCommand() *cobra.Command {
	var (
		h          contracts.Host
		knownHosts []string
		replace    bool
	)
	cmd := &cobra.Command{
		Use:   "add NAME --address ADDR --user USER --credential REF",
		Short: "Add a host to the inventory",
		Long: `Adds a host that jobs can name. Its host keys are pinned with --host-key (an
authorized_keys line, repeatable) or taken from OpenSSH known_hosts files
(--known-hosts), or later with 'ferry host trust'. A host without pinned keys is
refused by every job unless --trust-on-first-use lets the first connection pin
the key it sees.

--credential names a directory below the secrets directory of the services
(password, private_key + passphrase, keyboard_interactive.json, agent_socket).`,
		Example: `  ferry host add customer-1 --address 203.0.113.7 --user maint --credential customer-1 \
      --host-key "$(ssh-keyscan -t ed25519 203.0.113.7 2>/dev/null | cut -d' ' -f2-)" --root /opt/app
  ferry host add op-pc --address 10.0.0.12 --port 2222 --user helpdesk --credential op-pc --known-hosts ~/.ssh/known_hosts
  ferry host add lab-1 --address lab-1.internal --user ferry --credential lab --trust-on-first-use --site lab`,
		Args: cobra.ExactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			h.Name = args[0]
			if len(knownHosts) > 0 {
				port := h.Port
				if port == 0 {
					port = 22
				}
				keys, err := sshdial.KnownHostKeys(knownHosts, h.Address, port)
				if err != nil {
					return usageError(&contracts.ValidationError{Fields: []contracts.FieldError{{Field: "known_hosts", Problem: err.Error()}}})
				}
				if len(keys) == 0 {
					return usageError(&contracts.ValidationError{Fields: []contracts.FieldError{{Field: "known_hosts",
						Problem: fmt.Sprintf("no key for %s in %s", knownHostsName(h.Address, port), strings.Join(knownHosts, ", "))}}})
				}
				for _, k := range keys {
					h.HostKeys = append(h.HostKeys, sshdial.AuthorizedKey(k))
				}
			}
			if err := inventory.Normalize(&h); err != nil {
				return usageError(err)
			}
			ctx := cmd.Context()
			store, done, err := a.openInventory(ctx)
			if err != nil {
				return err
			}
			defer done()
			octx, cancel := a.withTimeout(ctx)
			defer cancel()
			if replace {
				err = store.Put(octx, h)
			} else {
				err = store.Add(octx, h)
			}
			if errors.Is(err, inventory.ErrHostExists) {
				return fmt.Errorf("host %s exists: pass --replace to overwrite it (or 'ferry host trust %s' to re-pin its keys)", h.Name, h.Name)
			}
			if err != nil {
				return hostError(err)
			}
			if a.output == "json" {
				return a.printJSON(newHostView(h))
			}
			verb := "added"
			if replace {
				verb = "stored"
			}
			fmt.Fprintf(a.stdout, "%s host %s (%s@%s, %d pinned key(s))\n", verb, h.Name, h.User, knownHostsName(h.Address, h.Port), len(h.HostKeys))
			if len(h.HostKeys) == 0 && !h.TrustOnFirstUse {
				fmt.Fprintf(a.stderr, "ferry: no host key is pinned: jobs will refuse %s until you run 'ferry host trust %s'\n", h.Name, h.Name)
			}
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&h.Address, "address", "", "host name or IP address")
	f.IntVar(&h.Port, "port", 22, "SSH port")
	f.StringVar(&h.User, "user", "", "login user")
	f.StringVar(&h.Credential, "credential", "", "credential reference: a directory below the secrets directory")
	f.StringArrayVar(&h.HostKeys, "host-key", nil, "pinned host key, an authorized_keys line such as 'ssh-ed25519 AAAA…' (repeatable)")
	f.StringArrayVar(&knownHosts, "known-hosts", nil, "pin the keys this OpenSSH known_hosts file lists for the address and port (repeatable)")
	f.BoolVar(&h.TrustOnFirstUse, "trust-on-first-use", false, "let the first connection pin the key it sees while no key is pinned")
	f.StringVar(&h.Site, "site", "", "site the host belongs to")
	f.StringArrayVar(&h.Roots, "root", nil, "directory jobs may use on the host, absolute or ~/… (repeatable; default: the home directory)")
	f.BoolVar(&replace, "replace", false, "overwrite the host if it exists")
	return cmd
}

// knownHostsName formats address and port the way OpenSSH does: "[a]:p" unless port 22.
func knownHostsName(address string, port int) string {
	if port == 22 || port == 0 {
		return address
	}
	return "[" + address + "]:" + strconv.Itoa(port)
}

// keyView describes one pinned host key.
type keyView struct {
	Type        string `json:"type"`
	Fingerprint string `json:"fingerprint"` // SHA256:…
}

// hostView is a host as `ferry host` prints it in JSON: the inventory entry plus
// the fingerprints of its pinned keys.
type hostView struct {
	contracts.Host
	Keys []keyView `json:"keys"`
}

func newHostView(h contracts.Host) hostView {
	v := hostView{Host: h, Keys: []keyView{}}
	for _, line := range h.HostKeys {
		v.Keys = append(v.Keys, describeKey(line))
	}
	return v
}

func describeKey(line string) keyView {
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return keyView{Type: "invalid", Fingerprint: "-"}
	}
	return keyView{Type: k.Type(), Fingerprint: ssh.FingerprintSHA256(k)}
}

// shortFingerprint abbreviates "SHA256:<43 characters>" for tables.
func shortFingerprint(fp string) string {
	const keep = len("SHA256:") + 12
	if len(fp) <= keep {
		return fp
	}
	return fp[:keep]
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (a *app) hostListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the hosts of the inventory",
		Args:  cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			store, done, err := a.openInventory(ctx)
			if err != nil {
				return err
			}
			defer done()
			octx, cancel := a.withTimeout(ctx)
			defer cancel()
			hosts, err := store.List(octx)
			if err != nil {
				return err
			}
			if a.output == "json" {
				views := make([]hostView, 0, len(hosts))
				for _, h := range hosts {
					views = append(views, newHostView(h))
				}
				return a.printJSON(views)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tADDRESS\tPORT\tUSER\tCREDENTIAL\tSITE\tKEYS\tTOFU")
			for _, h := range hosts {
				var fps []string
				for _, k := range newHostView(h).Keys {
					fps = append(fps, shortFingerprint(k.Fingerprint))
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", h.Name, h.Address, h.Port, h.User, h.Credential,
					dash(h.Site), dash(strings.Join(fps, ",")), yesNo(h.TrustOnFirstUse))
			}
			return tw.Flush()
		}),
	}
}

// hostAction runs f for the host the command's one argument names, with the inventory
// open and the request's deadline set.
func (a *app) hostAction(f func(ctx context.Context, store *inventory.Store, name string) error) func(*cobra.Command, []string) error {
	return action(func(cmd *cobra.Command, args []string) error {
		if err := checkHostName(args[0]); err != nil {
			return err
		}
		store, done, err := a.openInventory(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		ctx, cancel := a.withTimeout(cmd.Context())
		defer cancel()
		return f(ctx, store, args[0])
	})
}

func (a *app) hostGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show a host with its pinned host keys and their fingerprints",
		Args:  cobra.ExactArgs(1),
		RunE: a.hostAction(func(ctx context.Context, store *inventory.Store, name string) error {
			h, _, err := store.Get(ctx, name)
			if err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(newHostView(h))
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "host:\t%s\n", h.Name)
			fmt.Fprintf(tw, "address:\t%s\n", h.Address)
			fmt.Fprintf(tw, "port:\t%d\n", h.Port)
			fmt.Fprintf(tw, "user:\t%s\n", h.User)
			fmt.Fprintf(tw, "credential:\t%s\n", h.Credential)
			fmt.Fprintf(tw, "site:\t%s\n", dash(h.Site))
			roots := strings.Join(h.Roots, " ")
			if roots == "" {
				roots = "(the login user's home directory)"
			}
			fmt.Fprintf(tw, "roots:\t%s\n", roots)
			fmt.Fprintf(tw, "trust on first use:\t%s\n", yesNo(h.TrustOnFirstUse))
			if len(h.HostKeys) == 0 {
				fmt.Fprintf(tw, "host keys:\tnone pinned\n")
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if len(h.HostKeys) > 0 {
				fmt.Fprintln(a.stdout, "host keys:")
				tw = tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				for _, k := range newHostView(h).Keys {
					fmt.Fprintf(tw, "  %s\t%s\n", k.Type, k.Fingerprint)
				}
				return tw.Flush()
			}
			return nil
		}),
	}
}

func (a *app) hostRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a host from the inventory",
		Args:  cobra.ExactArgs(1),
		RunE: a.hostAction(func(ctx context.Context, store *inventory.Store, name string) error {
			if err := store.Remove(ctx, name); err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(map[string]any{"name": name, "removed": true})
			}
			fmt.Fprintf(a.stdout, "removed host %s\n", name)
			return nil
		}),
	}
}

// trustResult is what `ferry host trust -o json` prints.
type trustResult struct {
	Name     string    `json:"name"`
	Address  string    `json:"address"`
	Keys     []keyView `json:"keys"`     // presented by the host, now pinned
	Previous []keyView `json:"previous"` // pinned before
	Changed  bool      `json:"changed"`  // no presented key was pinned before
	Pinned   bool      `json:"pinned"`   // false when the pins were already these keys
}

func (a *app) hostTrustCommand() *cobra.Command {
	var (
		fingerprint string
		yes         bool
		scanTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "trust NAME [--fingerprint SHA256:...] [--yes]",
		Short: "Scan a host's SSH keys and pin them",
		Long: `Connects to the host without authenticating, collects the host keys it presents
(one connection per key type), prints their SHA256 fingerprints and pins them
all, replacing the keys pinned before.

Check a fingerprint out of band (on the host: ssh-keygen -lf
/etc/ssh/ssh_host_ed25519_key.pub) and pass it with --fingerprint: only that
key is pinned, and only if the host presents it. Without --fingerprint, ferry asks
for confirmation on a terminal; --yes skips the question (for scripts, when the
network path is trusted).`,
		Example: `  ferry host trust customer-1 --fingerprint SHA256:dlm4mOyXX3bA9Hs8yNiA2R0JAMiDQ0o6JBnp1hjCAuw
  ferry host trust lab-1 --yes`,
		Args: cobra.ExactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := checkHostName(name); err != nil {
				return err
			}
			if fingerprint != "" && !strings.HasPrefix(fingerprint, "SHA256:") {
				fingerprint = "SHA256:" + fingerprint
			}
			fingerprint = strings.TrimRight(fingerprint, "=")
			if scanTimeout <= 0 {
				return usageError(errors.New("--scan-timeout must be positive"))
			}
			ctx := cmd.Context()
			store, done, err := a.openInventory(ctx)
			if err != nil {
				return err
			}
			defer done()
			octx, cancel := a.withTimeout(ctx)
			h, _, err := store.Get(octx, name)
			cancel()
			if err != nil {
				return err
			}
			addr := knownHostsName(h.Address, h.Port)
			keys, err := sshdial.ScanHostKeys(ctx, h.Address, h.Port, scanTimeout)
			if err != nil {
				return fmt.Errorf("scanning the host keys of %s: %w", name, err)
			}
			res := trustResult{Name: name, Address: addr, Previous: newHostView(h).Keys}
			var lines []string
			matched := false
			for _, k := range keys {
				kv := keyView{Type: k.Type(), Fingerprint: ssh.FingerprintSHA256(k)}
				res.Keys = append(res.Keys, kv)
				lines = append(lines, sshdial.AuthorizedKey(k))
				matched = matched || kv.Fingerprint == fingerprint
			}
			// out receives the report; with -o json it goes to stderr so stdout stays JSON.
			out := a.stdout
			if a.output == "json" {
				out = a.stderr
			}
			fmt.Fprintf(out, "%s (%s) presents:\n", name, addr)
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			for _, k := range res.Keys {
				fmt.Fprintf(tw, "  %s\t%s\n", k.Type, k.Fingerprint)
			}
			tw.Flush()

			if fingerprint != "" && !matched {
				var got []string
				for _, k := range res.Keys {
					got = append(got, k.Fingerprint)
				}
				return fmt.Errorf("host %s presented %s, expected %s; nothing was pinned", name, strings.Join(got, ", "), fingerprint)
			}

			if fingerprint != "" {
				// Only the key checked out of band is pinned: each key type was scanned
				// over its own connection, and an interceptor could have answered the
				// others. The host then connects with that key type alone.
				for i, k := range res.Keys {
					if k.Fingerprint == fingerprint {
						res.Keys, lines = res.Keys[i:i+1], lines[i:i+1]
						break
					}
				}
			}
			same, overlap := comparePins(h.HostKeys, lines)
			switch {
			case same:
				fmt.Fprintf(out, "These keys are pinned for %s already; nothing changed.\n", name)
				if a.output == "json" {
					return a.printJSON(res)
				}
				return nil
			case len(h.HostKeys) == 0:
				fmt.Fprintf(out, "No key is pinned for %s yet.\n", name)
			case !overlap:
				res.Changed = true
				fmt.Fprintf(out, "WARNING: the host key of %s has CHANGED.\n", name)
				fmt.Fprintln(out, "Pinned before:")
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				for _, k := range res.Previous {
					fmt.Fprintf(tw, "  %s\t%s\n", k.Type, k.Fingerprint)
				}
				tw.Flush()
				fmt.Fprintln(out, "Pin the new keys only if you know the host was reinstalled or its keys replaced:")
				fmt.Fprintln(out, "someone may be intercepting the connection (man in the middle).")
			default:
				fmt.Fprintf(out, "The pinned keys of %s change (some were pinned before):\n", name)
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				for _, k := range res.Previous {
					if !slices.Contains(res.Keys, k) {
						fmt.Fprintf(tw, "  - %s\t%s\n", k.Type, k.Fingerprint)
					}
				}
				for _, k := range res.Keys {
					if !slices.Contains(res.Previous, k) {
						fmt.Fprintf(tw, "  + %s\t%s\n", k.Type, k.Fingerprint)
					}
				}
				tw.Flush()
			}

			switch {
			case matched:
				fmt.Fprintf(out, "%s matches the expected fingerprint.\n", fingerprint)
			case yes:
			case !a.stdinTerminal():
				return usageError(fmt.Errorf("not pinning the keys of %s without confirmation: stdin is not a terminal; "+
					"check a fingerprint out of band and pass --fingerprint SHA256:..., or pass --yes", name))
			default:
				fmt.Fprintf(a.stderr, "Pin these keys for %s? [y/N] ", name)
				answer, _ := bufio.NewReader(a.stdin).ReadString('\n')
				if ans := strings.ToLower(strings.TrimSpace(answer)); ans != "y" && ans != "yes" {
					return fmt.Errorf("not confirmed; nothing was pinned for %s", name)
				}
			}

			octx, cancel = a.withTimeout(ctx)
			defer cancel()
			if err := store.PinAll(octx, name, lines); err != nil {
				return err
			}
			res.Pinned = true
			if a.output == "json" {
				return a.printJSON(res)
			}
			fmt.Fprintf(a.stdout, "pinned %d host key(s) for %s\n", len(lines), name)
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&fingerprint, "fingerprint", "", "SHA256 fingerprint, checked out of band, that one presented key must have")
	f.BoolVar(&yes, "yes", false, "pin without asking (only when the network path is trusted)")
	f.DurationVar(&scanTimeout, "scan-timeout", 10*time.Second, "bound of each connection that collects a key")
	return cmd
}

// comparePins reports whether the pinned keys and the presented keys are the same
// set, and whether any presented key was pinned.
func comparePins(pinned, presented []string) (same, overlap bool) {
	blob := func(line string) string {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return "invalid:" + line
		}
		return string(k.Marshal())
	}
	old := map[string]bool{}
	for _, p := range pinned {
		old[blob(p)] = true
	}
	now := map[string]bool{}
	for _, p := range presented {
		b := blob(p)
		now[b] = true
		overlap = overlap || old[b]
	}
	same = len(old) == len(now)
	for b := range old {
		same = same && now[b]
	}
	return same, overlap
}
