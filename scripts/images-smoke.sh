#!/usr/bin/env bash
# Smoke test of the images `make images` builds (run it after make images):
#   - ferry/nats prints the version pkg/go.mod requires and serves /healthz;
#   - every service image connects to it and turns healthy (/healthz, docker health);
#   - ferry/operator-pc takes an ssh login and SFTP with a throwaway key;
#   - ferry/customer turns healthy, its PostgreSQL is reachable only through an SSH
#     tunnel and holds shop (customers 1000, orders 500, products 50), its logs exist.
# Everything runs on a throwaway network and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${IMAGE_TAG:-dev}
SERVICES=(orchestrator connector transfer archiver cleanup)
run_id=ferry-smoke-$$
tmp=$(mktemp -d)
containers=()

cleanup() {
	((${#containers[@]})) && docker rm -f "${containers[@]}" >/dev/null 2>&1
	docker network rm "$run_id" >/dev/null 2>&1
	rm -rf "$tmp"
}
trap cleanup EXIT
ok() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*" >&2; exit 1; }
start() { # name, docker run args...
	local name=$run_id-$1
	shift
	containers+=("$name")
	docker run -d --name "$name" --hostname "${name#"$run_id"-}" --network "$run_id" \
		--network-alias "${name#"$run_id"-}" "$@" >/dev/null
}
wait_healthy() { # name
	local s
	for _ in $(seq 120); do
		s=$(docker inspect -f '{{.State.Health.Status}}' "$run_id-$1" 2>/dev/null || echo gone)
		case $s in
		healthy) ok "$1 healthy"; return ;;
		unhealthy | gone) break ;;
		esac
		sleep 0.5
	done
	docker logs --tail 30 "$run_id-$1" >&2 || true
	fail "$1 is $s"
}
client() { # a throwaway ferry/base container on the network with the key mounted
	docker run --rm --network "$run_id" -v "$tmp/id:/key/id:ro" "ferry/base:bookworm" \
		bash -euc "install -m 0600 /key/id /tmp/id; $1"
}

docker network create "$run_id" >/dev/null

# NATS
want=$(cd pkg && GOWORK=off go list -m -f '{{.Version}}' github.com/nats-io/nats-server/v2)
got=$(docker run --rm "ferry/nats:$TAG" --version)
[[ $got == "nats-server: $want" ]] || fail "ferry/nats:$TAG is '$got', pkg/go.mod requires $want"
ok "ferry/nats:$TAG: $got"
cat >"$tmp/nats.conf" <<'CONF'
listen: 0.0.0.0:4222
http_port: 8222
jetstream { store_dir: /var/lib/nats/jetstream }
CONF
chmod 0644 "$tmp/nats.conf"
start nats -v "$tmp/nats.conf:/etc/nats/nats.conf:ro" \
	--health-cmd 'curl -fsS -o /dev/null "http://127.0.0.1:8222/healthz?js-enabled-only=true"' \
	--health-interval 1s "ferry/nats:$TAG"
wait_healthy nats

# Services
for s in "${SERVICES[@]}"; do
	start "$s" --init -e FERRY_NATS_URL=nats://nats:4222 --health-interval 1s "ferry/$s:$TAG"
done
for s in "${SERVICES[@]}"; do wait_healthy "$s"; done

# Targets
ssh-keygen -q -t ed25519 -N '' -C smoke -f "$tmp/id"
head -c 12 /dev/urandom | base64 >"$tmp/db_password"
chmod 0644 "$tmp/id.pub" "$tmp/db_password"
head -c 12 /dev/urandom | base64 >"$tmp/ssh_password"
chmod 0644 "$tmp/ssh_password"
start operator-pc --init -v "$tmp/id.pub:/etc/ferry/authorized_keys:ro" \
	-v "$tmp/ssh_password:/run/secrets/ssh_password:ro" --health-interval 1s \
	"ferry/operator-pc:$TAG"
start customer --init -v "$tmp/id.pub:/etc/ferry/authorized_keys:ro" \
	-v "$tmp/db_password:/run/secrets/db_password:ro" --health-interval 1s "ferry/customer:$TAG"
wait_healthy operator-pc
wait_healthy customer

ssh_opts='-i /tmp/id -o LogLevel=ERROR -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=/tmp/kh'
out=$(client "ssh $ssh_opts operator@operator-pc 'id -un; pwd; du -sb updates/app-2.3.1/bin/app'
	echo 'ls updates/app-2.3.1' | sftp -b - $ssh_opts operator@operator-pc")
grep -q '^operator$' <<<"$out" && grep -q '^/home/operator$' <<<"$out" &&
	grep -q '^8388608' <<<"$out" && grep -q 'README.md' <<<"$out" || fail "operator-pc login: $out"
ok "operator-pc: ssh + sftp login as operator with a key, ~/updates/app-2.3.1 present"
out=$(client "printf '#!/bin/sh\necho %s\n' '$(<"$tmp/ssh_password")' >/tmp/pw && chmod 700 /tmp/pw
	SSH_ASKPASS=/tmp/pw SSH_ASKPASS_REQUIRE=force setsid -w ssh -o LogLevel=ERROR \
	  -o StrictHostKeyChecking=no -o PubkeyAuthentication=no -o NumberOfPasswordPrompts=1 \
	  operator@operator-pc id -un </dev/null")
[[ $out == operator ]] || fail "operator-pc password login: $out"
ok "operator-pc: password login with the mounted password"
if client "ssh $ssh_opts -o PasswordAuthentication=no root@operator-pc true" 2>/dev/null; then
	fail "operator-pc: root login accepted"
fi
ok "operator-pc: root login refused"

if client "pg_isready -q -h customer -p 5432 -t 2"; then fail "customer: PostgreSQL reachable without the tunnel"; fi
ok "customer: PostgreSQL not reachable from the network"
out=$(client "ssh $ssh_opts -f -N -o ExitOnForwardFailure=yes -L 127.0.0.1:15432:127.0.0.1:5432 customer@customer
	PGPASSWORD='$(<"$tmp/db_password")' psql -h 127.0.0.1 -p 15432 -U ferry -d shop -tA -c \
	\"SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM orders), (SELECT count(*) FROM products)\"")
[[ $out == "1000|500|50" ]] || fail "customer: shop row counts through the tunnel: $out"
ok "customer: through an ssh tunnel as ferry: shop has customers=1000 orders=500 products=50"
docker exec "$run_id-customer" pg_isready -h 127.0.0.1 -p 5432 >/dev/null || fail "customer: pg_isready"
ok "customer: pg_isready inside"
out=$(client "ssh $ssh_opts customer@customer 'cd /var/log/app && ls'" | tr '\n' ' ')
[[ $out == "app.log app.log.1 app.log.2.gz app.log.3.gz error.log error.log.1 " ]] || fail "customer logs: $out"
ok "customer: /var/log/app: $out"

docker stop -t 20 "$run_id-customer" >/dev/null
docker logs "$run_id-customer" 2>&1 | grep -q 'database system is shut down' || fail "customer: PostgreSQL not shut down cleanly"
ok "customer: clean shutdown on docker stop"
echo "images smoke test passed"
