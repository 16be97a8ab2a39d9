#!/bin/bash
# Entrypoint of ferry's e2e targets (ferry/operator-pc, ferry/customer).
#
# Runs as root; the image sets TARGET_USER (operator or customer) and TARGET_DB.
# Inputs, all optional unless noted, read at every start:
#
#   /etc/ferry/authorized_keys      public keys allowed to log in as TARGET_USER
#     (SSH_AUTHORIZED_KEYS_FILE)    (mount read-only; copied root-owned, so any
#                                   ownership of the mount is fine)
#   SSH_AUTHORIZED_KEYS             the same, inline (appended)
#   /run/secrets/ssh_password       a password for TARGET_USER (password and
#     (SSH_PASSWORD_FILE)           keyboard-interactive logins); none: keys only
#   SSH_PASSWORD                    the same, inline
#   /etc/ferry/host_keys/           ssh_host_*_key (+ .pub) to use as host keys, so a
#     (SSH_HOST_KEYS_DIR)           test can pin them; none: ssh-keygen -A at first start
#
# customer only:
#   /run/secrets/db_password        REQUIRED (or DB_PASSWORD): password of the database
#     (DB_PASSWORD_FILE)            user "ferry", set at every start
#   PGDATA                          /var/lib/postgresql/data (a volume keeps it)
#
# First start of the customer: initdb, PostgreSQL on 127.0.0.1:5432 only, database
# "shop" owned by "ferry" (customers 1000, orders 500, products 50 rows), log files in
# /var/log/app. First start of the operator PC: an update in ~/updates/app-2.3.1.
# Then sshd -D -e in the foreground; SIGTERM stops sshd and PostgreSQL (fast).
set -euo pipefail

log() { printf 'target: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

user=${TARGET_USER:?TARGET_USER is set by the image}
home=$(getent passwd "$user" | cut -d: -f6)
group=$(id -gn "$user")
rm -f /run/ferry-target.ready
install -d -m 0755 /run/sshd /etc/ssh/authorized_keys

# Host keys.
keys_dir=${SSH_HOST_KEYS_DIR:-/etc/ferry/host_keys}
if compgen -G "$keys_dir/ssh_host_*_key" >/dev/null; then
	rm -f /etc/ssh/ssh_host_*
	for k in "$keys_dir"/ssh_host_*_key; do
		install -m 0600 "$k" /etc/ssh/
		[[ -e $k.pub ]] && install -m 0644 "$k.pub" /etc/ssh/
	done
	log "host keys from $keys_dir"
elif ! compgen -G "/etc/ssh/ssh_host_*_key" >/dev/null; then
	ssh-keygen -A >/dev/null
	log "host keys generated"
fi
for k in /etc/ssh/ssh_host_*_key.pub; do log "host key $(ssh-keygen -lf "$k")"; done

# Authorized keys, root-owned so StrictModes holds.
ak=/etc/ssh/authorized_keys/$user
{
	f=${SSH_AUTHORIZED_KEYS_FILE:-/etc/ferry/authorized_keys}
	if [[ -r $f ]]; then cat "$f"; echo; fi
	if [[ -n ${SSH_AUTHORIZED_KEYS:-} ]]; then printf '%s\n' "$SSH_AUTHORIZED_KEYS"; fi
} | grep -Ev '^\s*(#|$)' >"$ak.tmp" || true
chmod 0644 "$ak.tmp" && mv "$ak.tmp" "$ak"
log "$(wc -l <"$ak") authorized key(s) for $user"

# Password.
pw_file=${SSH_PASSWORD_FILE:-/run/secrets/ssh_password}
pw=${SSH_PASSWORD:-}
if [[ -z $pw && -r $pw_file ]]; then pw=$(<"$pw_file"); fi
if [[ -n $pw ]]; then
	printf '%s:%s\n' "$user" "$pw" | chpasswd
	log "password set for $user"
else
	usermod -p '*' "$user"
	[[ -s $ak ]] || die "no way to log in as $user: mount /etc/ferry/authorized_keys or give a password"
fi
unset pw SSH_PASSWORD

# First start: an update on the operator's PC (like ferry dev --demo's).
seed_update() {
	local d=$home/updates/app-2.3.1
	[[ -e $home/updates ]] && return
	install -d -o "$user" -g "$group" "$home/updates" "$d" "$d/bin" "$d/config"
	printf '# app 2.3.1\n\nAn update ferry pushes to customer servers.\n' >"$d/README.md"
	printf 'listen = ":8080"\nlog_level = "info"\n' >"$d/config/app.toml"
	# 8 MiB, deterministic and incompressible.
	openssl enc -aes-128-ctr -nosalt -K 00000000000000000000000000000000 -iv 00000000000000000000000000000000 \
		</dev/zero 2>/dev/null | head -c 8388608 >"$d/bin/app" || true
	chmod 0755 "$d/bin/app"
	chown -R "$user:$group" "$home/updates"
	log "update in $d"
}

# First start: logs of an application on the customer server, recent except app.log.3.gz.
seed_logs() {
	local d=/var/log/app
	[[ -e $d/app.log ]] && return
	lines() { # n level
		awk -v n="$1" -v lvl="$2" 'BEGIN { for (i = 1; i <= n; i++)
			printf "2025-06-01T%02d:%02d:%02d.%03dZ %-5s app: request %06d handled in %d ms user=u%04d path=/api/orders/%d\n",
				(i / 3600) % 24, (i / 60) % 60, i % 60, i % 1000, lvl, i, i % 97, i % 1000, i }'
	}
	lines 20000 INFO >"$d/app.log"
	lines 20000 INFO >"$d/app.log.1"
	lines 20000 INFO | gzip -9n >"$d/app.log.2.gz"
	lines 20000 INFO | gzip -9n >"$d/app.log.3.gz"
	lines 200 ERROR >"$d/error.log"
	lines 200 ERROR >"$d/error.log.1"
	touch -d '6 hours ago' "$d/app.log.1" "$d/error.log.1"
	touch -d '12 hours ago' "$d/app.log.2.gz"
	touch -d '3 days ago' "$d/app.log.3.gz"
	chown -R "$user:$group" "$d"
	chmod 0644 "$d"/*
	log "logs in $d: $(cd "$d" && echo *)"
}

pg_pid=
start_db() {
	local bin=/usr/lib/postgresql/15/bin db_pw
	db_pw=${DB_PASSWORD:-}
	if [[ -z $db_pw && -r ${DB_PASSWORD_FILE:-/run/secrets/db_password} ]]; then
		db_pw=$(<"${DB_PASSWORD_FILE:-/run/secrets/db_password}")
	fi
	[[ -n $db_pw ]] || die "no database password: mount /run/secrets/db_password (DB_PASSWORD_FILE) or set DB_PASSWORD"
	unset DB_PASSWORD
	install -d -o postgres -g postgres -m 0700 "$PGDATA"
	install -d -o postgres -g postgres -m 2775 /var/run/postgresql
	if [[ ! -s $PGDATA/PG_VERSION ]]; then
		log "initdb $PGDATA"
		runuser -u postgres -- "$bin/initdb" -D "$PGDATA" --username=postgres --encoding=UTF8 \
			--locale=C.UTF-8 --auth-local=peer --auth-host=scram-sha-256 >/dev/null
		cat >>"$PGDATA/postgresql.conf" <<-CONF
			# ferry e2e target: reachable only through an SSH tunnel.
			listen_addresses = '127.0.0.1'
			port = 5432
			unix_socket_directories = '/var/run/postgresql'
			log_connections = on
		CONF
	fi
	setpriv --reuid=postgres --regid=postgres --init-groups -- "$bin/postgres" -D "$PGDATA" &
	pg_pid=$!
	for _ in $(seq 100); do
		"$bin/pg_isready" -q -h /var/run/postgresql && break
		kill -0 "$pg_pid" 2>/dev/null || die "postgres exited"
		sleep 0.2
	done
	psql() { runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -X -q -v ON_ERROR_STOP=1 "$@"; }
	if [[ -z $(psql -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'ferry'") ]]; then
		psql -c "CREATE ROLE ferry LOGIN"
	fi
	printf "ALTER ROLE ferry PASSWORD :'pw';\n" | psql -v pw="$db_pw"
	if [[ -z $(psql -tAc "SELECT 1 FROM pg_database WHERE datname = 'shop'") ]]; then
		psql -c "CREATE DATABASE shop OWNER ferry"
		psql -d shop -f /usr/local/share/ferry/seed-shop.sql
		log "database shop seeded: $(psql -d shop -tAc "SELECT string_agg(t || '=' || n, ' ') FROM (
			SELECT 'customers' t, count(*) n FROM customers UNION ALL
			SELECT 'orders', count(*) FROM orders UNION ALL
			SELECT 'products', count(*) FROM products) c")"
	fi
	unset db_pw
}

sshd_pid=
stop() {
	log "stopping"
	[[ -n $sshd_pid ]] && kill -TERM "$sshd_pid" 2>/dev/null
	[[ -n $pg_pid ]] && kill -INT "$pg_pid" 2>/dev/null # fast shutdown
	wait
	exit 0
}
trap stop TERM INT

if [[ ${TARGET_DB:-0} == 1 ]]; then
	seed_logs
	start_db
else
	seed_update
fi

/usr/sbin/sshd -D -e &
sshd_pid=$!
touch /run/ferry-target.ready
log "ready: sshd (user $user)${pg_pid:+ and PostgreSQL on 127.0.0.1:5432}"
# Until sshd or postgres ends (then the container stops), or SIGTERM.
set +e
wait -n
rc=$?
log "a server exited ($rc)"
stop
