#!/usr/bin/env bash
# Builds the local base image of every ferry image, without a container registry:
# debootstrap a minimal Debian bookworm from the mirror apt uses, install what the
# services and the end-to-end targets need, and `docker import` it.
#
#   deployments/images/base/build.sh            builds ferry/base:bookworm if it is absent
#   FORCE=1 deployments/images/base/build.sh    rebuilds it
#
# Environment: BASE_IMAGE (default ferry/base:bookworm), MIRROR and SECURITY_MIRROR
# (default: the URIs in /etc/apt/sources.list.d/debian.sources, else deb.debian.org).
# Needs root (debootstrap, chroot); installs debootstrap with apt-get when missing.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-ferry/base:bookworm}
SUITE=bookworm
PACKAGES=(
	ca-certificates openssl coreutils procps iproute2 netbase tzdata curl
	openssh-server openssh-client
	postgresql-15 postgresql-client-15 mariadb-client
)

log() { printf 'base: %s\n' "$*"; }

if [[ ${FORCE:-0} != 1 ]] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
	log "$BASE_IMAGE exists (FORCE=1 rebuilds it)"
	exit 0
fi
if [[ $(id -u) != 0 ]]; then
	echo "base: debootstrap needs root" >&2
	exit 1
fi

# The mirrors apt uses on this machine: the first URIs of a stanza whose suites name
# $SUITE (or $SUITE-security) in debian.sources, or a "deb" line in sources.list.
apt_uri() { # suite-regex
	local f=/etc/apt/sources.list.d/debian.sources uri=
	if [[ -r $f ]]; then
		uri=$(awk -v re="$1" '
			/^$/ { u = ""; s = ""; next }
			/^URIs:/ { u = $2 } /^Suites:/ { s = $0 }
			u != "" && s != "" && s ~ re { print u; exit }' "$f")
	fi
	if [[ -z $uri && -r /etc/apt/sources.list ]]; then
		uri=$(awk -v re="$1" '$1 == "deb" && $3 ~ re { print $2; exit }' /etc/apt/sources.list)
	fi
	echo "${uri%/}"
}
MIRROR=${MIRROR:-$(apt_uri "(^|[ :])$SUITE( |$)")}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(apt_uri "$SUITE-security")}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

if ! command -v debootstrap >/dev/null; then
	log "installing debootstrap"
	apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
		{ apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
fi

root=$(mktemp -d /var/tmp/ferry-base.XXXXXX)
cleanup() {
	for m in proc sys dev/pts; do
		mountpoint -q "$root/$m" && umount -l "$root/$m"
	done
	rm -rf --one-file-system "$root"
}
trap cleanup EXIT
start=$SECONDS

log "debootstrap --variant=minbase $SUITE from $MIRROR into $root"
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 ||
	{ tail -30 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

cat >"$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
rm -f "$root/etc/apt/sources.list"
# No daemon starts inside the chroot; no PostgreSQL cluster baked into the image (the
# customer target creates and seeds its own at first start); no docs or man pages.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
mkdir -p "$root/etc/postgresql-common/createcluster.d"
echo 'create_main_cluster = false' >"$root/etc/postgresql-common/createcluster.d/ferry.conf"
cat >"$root/etc/dpkg/dpkg.cfg.d/ferry-nodoc" <<'NODOC'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
NODOC
cat >"$root/etc/apt/apt.conf.d/ferry" <<'APTCONF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
APTCONF

mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mkdir -p "$root/dev/pts" && mount -t devpts devpts "$root/dev/pts"
in_root() { LC_ALL=C DEBIAN_FRONTEND=noninteractive chroot "$root" "$@"; }

log "apt-get install ${PACKAGES[*]}"
{
	in_root apt-get update -q
	in_root apt-get -y -q upgrade
	in_root apt-get install -y -q "${PACKAGES[@]}"
} >"$root.log" 2>&1 || { tail -30 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

log "cleaning"
in_root apt-get clean
for m in dev/pts sys proc; do umount "$root/$m"; done
rm -f "$root/usr/sbin/policy-rc.d"
# Host keys are per container (generated at its first start), never per image.
rm -f "$root"/etc/ssh/ssh_host_*
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
	"$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.bash_history
mkdir -p "$root/var/lib/apt/lists/partial" "$root/var/cache/apt/archives/partial" "$root/run/sshd"
: >"$root/etc/machine-id"
echo "ferry" >"$root/etc/hostname"

log "docker import $BASE_IMAGE"
tar -C "$root" --numeric-owner -c . | docker import \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'ENV LANG=C.UTF-8' \
	--change 'CMD ["/bin/bash"]' \
	--message "debootstrap $SUITE from $MIRROR: ${PACKAGES[*]}" \
	- "$BASE_IMAGE" >/dev/null
log "built $BASE_IMAGE in $((SECONDS - start))s ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
