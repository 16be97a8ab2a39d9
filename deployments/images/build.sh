#!/usr/bin/env bash
# Builds ferry's images FROM the local base image (make images builds the base with
# base/build.sh and the static binaries into bin/linux-amd64 first). Each build context
# holds only what the image copies.
#
# Environment: IMAGE_TAG (default dev), BASE_IMAGE (default ferry/base:bookworm),
# BIN_DIR (default bin/linux-amd64), CTX_DIR (default bin/images).
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE_TAG=${IMAGE_TAG:-dev}
BASE_IMAGE=${BASE_IMAGE:-ferry/base:bookworm}
BIN_DIR=${BIN_DIR:-bin/linux-amd64}
CTX_DIR=${CTX_DIR:-bin/images}
SERVICES=(orchestrator connector transfer archiver cleanup)

build() { # image, docker build args...
	local image=$1 start=$SECONDS out
	shift
	if ! out=$(DOCKER_BUILDKIT=0 docker build --build-arg "BASE=$BASE_IMAGE" -t "$image" "$@" 2>&1); then
		printf '%s\n' "$out" >&2
		echo "images: building $image failed" >&2
		return 1
	fi
	printf 'image %-28s %3ds\n' "$image" $((SECONDS - start))
}

stage() { # name, binary: a context of the binary (hard link) and a symlink ferry-service to it
	rm -rf "${CTX_DIR:?}/$1" && mkdir -p "$CTX_DIR/$1"
	ln -f "$BIN_DIR/$2" "$CTX_DIR/$1/$2" 2>/dev/null || cp "$BIN_DIR/$2" "$CTX_DIR/$1/$2"
	[[ $1 == nats ]] || ln -s "$2" "$CTX_DIR/$1/ferry-service"
}

for s in "${SERVICES[@]}"; do
	stage "$s" "$s"
	build "ferry/$s:$IMAGE_TAG" -f deployments/images/service/Dockerfile "$CTX_DIR/$s"
done
stage nats nats-server
build "ferry/nats:$IMAGE_TAG" -f deployments/images/nats/Dockerfile "$CTX_DIR/nats"
for t in operator-pc customer; do
	build "ferry/$t:$IMAGE_TAG" --target "$t" deployments/images/target
done
# Any other deployments/images/<name>/Dockerfile (prometheus, ...): ferry/<name>, its
# directory as the context.
for df in deployments/images/*/Dockerfile; do
	name=$(basename "$(dirname "$df")")
	case $name in service | nats | target) continue ;; esac
	build "ferry/$name:$IMAGE_TAG" "$(dirname "$df")"
done
