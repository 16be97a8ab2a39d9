#!/usr/bin/env bash
# make certs: the test TLS material and the NATS passwords of the compose stack, in
# deployments/tls/ (gitignored; FERRY_TLS_DIR overrides). Idempotent: what exists and
# is valid is kept, only what is missing is made.
#
#   ca.pem, ca-key.pem            a test CA (10 years)
#   server.pem, server-key.pem    NATS's certificate, signed by the CA, for nats, nats-1,
#                                 nats-2, nats-3, localhost and 127.0.0.1; server and client
#                                 auth (the cluster's routes use it both ways)
#   passwords/<user>              one random password per NATS user (0600), for
#                                 FERRY_NATS_PASSWORD_FILE; users as in deployments/nats/auth.conf
#   nats.env                      FERRY_NATS_PW_<USER>=... for the NATS container (env_file)
#
# Keys and passwords are 0600. Containers that do not run as the owner cannot read a
# bind-mounted 0600 file: run as root with NATS_UID (e.g. 10002, the nats image's user)
# and SERVICE_UID (e.g. 10001, the services' user) to hand the server key to NATS and
# each service's password file to the services.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${FERRY_TLS_DIR:-deployments/tls}
auth=deployments/nats/auth.conf
sans="DNS:nats,DNS:nats-1,DNS:nats-2,DNS:nats-3,DNS:localhost,IP:127.0.0.1"
services="orchestrator connector transfer archiver cleanup"

umask 077
mkdir -p "$out/passwords"
chmod 0700 "$out" "$out/passwords"

made=()

# The CA.
if [[ ! -s $out/ca.pem || ! -s $out/ca-key.pem ]]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/ca-key.pem" 2>/dev/null
  openssl req -x509 -new -key "$out/ca-key.pem" -sha256 -days 3650 -subj "/CN=ferry test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/ca.pem"
  rm -f "$out/server.pem" # signed by a CA that is gone
  made+=(ca.pem)
fi

# The server certificate: made again when missing, not signed by this CA, lacking a
# name, or expiring within 30 days.
server_ok() {
  [[ -s $out/server.pem && -s $out/server-key.pem ]] || return 1
  openssl verify -CAfile "$out/ca.pem" "$out/server.pem" >/dev/null 2>&1 || return 1
  openssl x509 -in "$out/server.pem" -noout -checkend $((30 * 86400)) >/dev/null || return 1
  local have
  have=$(openssl x509 -in "$out/server.pem" -noout -ext subjectAltName 2>/dev/null | tr -d ' \n')
  local san
  for san in ${sans//,/ }; do
    [[ $have == *"${san/IP:/IPAddress:}"* ]] || return 1
  done
}
if ! server_ok; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/server-key.pem" 2>/dev/null
  openssl req -new -key "$out/server-key.pem" -subj "/CN=nats" -out "$tmp/server.csr"
  cat >"$tmp/ext.cnf" <<EOF
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = $sans
EOF
  openssl x509 -req -in "$tmp/server.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" -CAcreateserial \
    -CAserial "$tmp/ca.srl" -days 825 -sha256 -extfile "$tmp/ext.cnf" -out "$out/server.pem" 2>/dev/null
  made+=(server.pem)
fi
chmod 0644 "$out/ca.pem" "$out/server.pem"
chmod 0600 "$out/ca-key.pem" "$out/server-key.pem"

# One password per user of the generated configuration: letters and digits, starting
# with a letter (the server reads it through its configuration parser, which would take
# a leading digit for a number).
users=$(sed -n 's/^ *{user: \([A-Za-z0-9_-]*\), password: \$\(FERRY_NATS_PW_[A-Z0-9_]*\),.*/\1 \2/p' "$auth")
if [[ -z $users ]]; then
  echo "certs: no users found in $auth" >&2
  exit 1
fi
password() {
  local pw=""
  while [[ ! $pw =~ ^[A-Za-z] ]]; do
    pw=$(openssl rand -base64 64 | tr -dc 'A-Za-z0-9')
  done
  printf '%s' "${pw:0:32}"
}
env_tmp=$(mktemp "$out/.nats.env.XXXXXX")
echo "# FERRY_NATS_PW_<USER> for the NATS container (env_file); made by make certs from passwords/." >"$env_tmp"
while read -r user var; do
  f=$out/passwords/$user
  if [[ ! -s $f ]]; then
    password >"$f"
    made+=("passwords/$user")
  fi
  chmod 0600 "$f"
  printf '%s=%s\n' "$var" "$(cat "$f")" >>"$env_tmp"
done <<<"$users"
chmod 0600 "$env_tmp"
mv "$env_tmp" "$out/nats.env"

# Ownership for containers that run as other users.
if [[ -n ${NATS_UID:-} ]]; then
  chown "$NATS_UID" "$out/server-key.pem" "$out/server.pem" "$out/ca.pem"
fi
if [[ -n ${SERVICE_UID:-} ]]; then
  for s in $services; do
    chown "$SERVICE_UID" "$out/passwords/$s"
  done
fi

if ((${#made[@]})); then
  echo "certs: made ${made[*]} in $out"
else
  echo "certs: $out is complete; nothing made"
fi
