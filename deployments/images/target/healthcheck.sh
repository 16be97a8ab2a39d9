#!/bin/bash
# Healthy when the entrypoint finished its first-start work, sshd listens on port 22
# (checked with ss, not a connection: no log lines every interval) and, on the
# customer, PostgreSQL accepts connections.
set -eu
test -e /run/ferry-target.ready
ss -Hltn 'sport = :22' | grep -q .
if [[ ${TARGET_DB:-0} == 1 ]]; then
	/usr/lib/postgresql/15/bin/pg_isready -q -h 127.0.0.1 -p 5432 -d shop -t 3
fi
