package dbdump

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
)

// Patterns of the tools' messages (LC_ALL=C), checked in order.
var (
	pgAuth = []string{"password authentication failed", "no password supplied", "no pg_hba.conf entry",
		"authentication failed for user"}
	pgPrivilege = []string{"permission denied"}
	pgNoDB      = regexp.MustCompile(`database "([^"]*)" does not exist`)
	pgLost      = []string{"server closed the connection unexpectedly", "connection to server was lost",
		"could not receive data from server", "could not send data to server", "ssl syscall error",
		"eof detected", "connection reset by peer", "broken pipe", "terminating connection",
		"no connection to the server", "lost synchronization with server"}
	pgUnreachable = []string{"connection refused", "could not connect to server", "connection to server at",
		"timeout expired", "could not translate host name", "no route to host", "network is unreachable"}
	pgVersion = []string{"server version mismatch", "aborting because of server version mismatch"}

	myAuth       = []string{"error: 1045", "(using password:"}
	myNoAccessDB = regexp.MustCompile(`(?i)error: 1044|access denied for user '[^']*'@'[^']*' to database`)
	myPrivilege  = []string{"error: 1227", "error: 1142", "error: 1143", "access denied; you need"}
	myNoDB       = []string{"error: 1049", "unknown database"}
	myLost       = []string{"error 2013", "error: 2013", "lost connection", "error 2006", "error: 2006",
		"server has gone away", "error 2055", "error: 2055", "connection reset by peer", "broken pipe"}
	myUnreachable = []string{"error: 2002", "error: 2003", "error: 2005", "can't connect", "unknown server host"}
	// A connection the tunnel closed before the server greeted is a closed port, not a
	// lost dump.
	myHandshake = []string{"reading initial communication packet", "handshake"}
)

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// classify turns a failed tool run into an *Error. size is what the tool had written:
// a connection that broke after data came is a lost dump, before it an unreachable port.
func classify(t Target, bin string, runErr error, out string, size int64) *Error {
	tool := filepath.Base(bin)
	lower := strings.ToLower(out)
	detail := fmt.Sprintf("%s (%s): %s", tool, exitStatus(runErr), excerpt(out, t.Password))
	where := fmt.Sprintf("%s at %s", t.Engine, t.Addr)
	lost := &Error{Kind: ErrConnectionLost, Msg: fmt.Sprintf(
		"connection to the database %s was lost during the dump (after %d bytes; the tunnel dropped?): %s", where, size, detail)}
	unreachable := &Error{Kind: ErrUnreachable, Msg: fmt.Sprintf(
		"database port closed or unreachable through the tunnel at %s: %s", t.Addr, detail)}

	switch t.Engine {
	case Postgres:
		switch {
		case containsAny(lower, pgAuth):
			msg := fmt.Sprintf("database password rejected for user %s (%s, database %q)", t.user(), where, t.Database)
			if !t.Password.IsSet() {
				msg = fmt.Sprintf("database login refused for user %s (%s, database %q): no password configured (db_credential)", t.user(), where, t.Database)
			}
			return &Error{Kind: ErrAuth, Msg: msg + ": " + detail}
		case pgNoDB.MatchString(out):
			return &Error{Kind: ErrNoDatabase, Msg: fmt.Sprintf("database %s does not exist (%s): %s", t.Database, where, detail)}
		case containsAny(lower, pgPrivilege):
			return &Error{Kind: ErrAuth, Msg: fmt.Sprintf("database user %s lacks a privilege the dump needs (%s, database %q): %s", t.user(), where, t.Database, detail)}
		case containsAny(lower, pgVersion):
			return &Error{Kind: ErrTool, Msg: fmt.Sprintf("%s cannot dump the server at %s: %s", tool, t.Addr, detail)}
		case containsAny(lower, pgLost):
			if size > 0 || strings.Contains(lower, "dumping the contents of table") || strings.Contains(lower, "query failed") {
				return lost
			}
			return unreachable
		case containsAny(lower, pgUnreachable):
			return unreachable
		}
	case MySQL:
		switch {
		case containsAny(lower, myAuth):
			msg := fmt.Sprintf("database password rejected for user %s (%s, database %q)", t.user(), where, t.Database)
			if strings.Contains(lower, "using password: no") {
				msg = fmt.Sprintf("database login refused for user %s (%s, database %q): no password configured (db_credential)", t.user(), where, t.Database)
			}
			return &Error{Kind: ErrAuth, Msg: msg + ": " + detail}
		case myNoAccessDB.MatchString(out):
			return &Error{Kind: ErrNoDatabase, Msg: fmt.Sprintf("database %s does not exist or user %s may not access it (%s): %s", t.Database, t.user(), where, detail)}
		case containsAny(lower, myNoDB):
			return &Error{Kind: ErrNoDatabase, Msg: fmt.Sprintf("database %s does not exist (%s): %s", t.Database, where, detail)}
		case containsAny(lower, myPrivilege):
			return &Error{Kind: ErrAuth, Msg: fmt.Sprintf("database user %s lacks a privilege the dump needs (%s, database %q): %s", t.user(), where, t.Database, detail)}
		case containsAny(lower, myLost):
			if size > 0 || strings.Contains(lower, "during query when dumping") || strings.Contains(lower, "when dumping table") {
				return lost
			}
			if containsAny(lower, myHandshake) || size == 0 {
				return unreachable
			}
			return lost
		case containsAny(lower, myUnreachable):
			return unreachable
		}
	}
	return &Error{Kind: ErrFailed, Msg: fmt.Sprintf("dump of %s database %q failed: %s", where, t.Database, detail)}
}
