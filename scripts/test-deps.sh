#!/usr/bin/env bash
# Installs what the tests need on a Debian machine, once: a real OpenSSH server (the tests
# start their own throwaway sshd on loopback; the system's sshd is never started), the ssh
# client tools, and MariaDB server + client (the dump tests start their own throwaway
# mariadbd; the system's MariaDB service is never started), and promtool (Debian's
# prometheus package: the metrics, alert-rule and dashboard checks; the Prometheus
# service it brings is not started). PostgreSQL 15 server + client, and python3 (a
# large pushed file is hashed on the host by python3 where the host has it, and the
# test hosts are this machine), are expected on the machine image and installed here
# only when missing.
# Idempotent and quiet when everything is there.
set -euo pipefail

missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
command -v ssh-agent >/dev/null 2>&1 || missing+=(openssh-client)
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
command -v pg_dump >/dev/null 2>&1 || missing+=(postgresql-client-15)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v mariadb-install-db >/dev/null 2>&1 || missing+=(mariadb-server)
command -v mariadb-dump >/dev/null 2>&1 || missing+=(mariadb-client)
command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/python3 ] || missing+=(python3) # the test hosts' push follower (pkg/remote)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "test-deps: missing ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps the packages from starting system services (sshd, mariadb,
# postgresql, prometheus): the tests run their own. One that is there already is left alone.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
