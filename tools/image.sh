#!/usr/bin/env bash
# Build the serving image from the repository's Dockerfile (`make image`), wherever the
# builder stands: with normal internet this is a plain BuildKit build; on a machine that
# reaches only the package registries (through a TLS-intercepting proxy) it makes up for
# what cannot be reached, and says so.
#
#   tools/image.sh build --tag msde:1.0.0 [--mar model_store/msde.mar] [--variant cpu|cuda]
#   tools/image.sh base          # only (re)make the local Debian base, see below
#   tools/image.sh ca-bundle     # the CA bundle a build passes as its secret (or nothing)
#
# What it decides, each printed:
#  * base image: PYTHON_IMAGE if it is present or can be pulled (default: the official
#    python:3.11-slim-bookworm); else a local base of the same Debian release and Python
#    minor, made with mmdebstrap (bookworm, minbase, python3) and `docker import`, once.
#  * CA: the CA bundle pip uses here (PIP_CERT, pip's `cert` setting, SSL_CERT_FILE) goes to
#    the build as the secret `pip_cert`, never as a file in the context or a layer.
#  * torch (cpu variant): the Dockerfile's CPU wheel index when reachable; else a torch CPU
#    wheel from a local wheelhouse (MSDE_WHEELHOUSE, or pip's find-links), served on a
#    loopback port for the build only. If that wheel is another version than the lock's, the
#    image holds that version (TORCH_VERSION build argument): reported, never hidden.
#
# Environment: DOCKER (client, default: docker, else a BuildKit-capable /usr/bin/docker),
# PYTHON_IMAGE, LOCAL_BASE (tag of the local base), MSDE_WHEELHOUSE, TORCH_INDEX_URL.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm}
LOCAL_BASE=${LOCAL_BASE:-msde-base/python:3.11-bookworm}
DEBIAN_RELEASE=bookworm
PYTHON_MINOR=3.11
CPU_INDEX_DEFAULT=$(sed -n 's/^ARG TORCH_INDEX_URL=//p' Dockerfile)
TORCH_INDEX_URL=${TORCH_INDEX_URL:-$CPU_INDEX_DEFAULT}

# A client that can run BuildKit builds: Docker >= 23 needs the buildx plugin for that;
# Debian's docker.io (20.10) has BuildKit built in.
docker_client() {
    local candidate
    for candidate in "${DOCKER:-docker}" /usr/bin/docker; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" buildx version >/dev/null 2>&1; then
            printf '%s buildx build --load' "$candidate"; return 0
        fi
        local major
        major=$("$candidate" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
        if [ -n "$major" ] && [ "$major" -lt 23 ]; then
            printf '%s build' "$candidate"; return 0
        fi
    done
    die "no Docker client that can build with BuildKit (install buildx, or Debian's docker.io)"
}

have_image() { ${DOCKER:-docker} image inspect "$1" >/dev/null 2>&1; }

make_local_base() {
    command -v mmdebstrap >/dev/null || die "mmdebstrap not installed (apt-get install mmdebstrap)"
    [ "$(id -u)" = 0 ] || die "mmdebstrap runs as root here"
    local tar
    tar=$(mktemp --suffix=.tar)
    log "making $LOCAL_BASE: Debian $DEBIAN_RELEASE minbase + python3 (a few minutes)"
    # same sources as the official image: the release, its updates and security
    mmdebstrap --variant=minbase --quiet \
        --include=python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$DEBIAN_RELEASE" "$tar" \
        "deb http://deb.debian.org/debian $DEBIAN_RELEASE main" \
        "deb http://deb.debian.org/debian $DEBIAN_RELEASE-updates main" \
        "deb http://deb.debian.org/debian-security $DEBIAN_RELEASE-security main"
    ${DOCKER:-docker} import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        --message "mmdebstrap $DEBIAN_RELEASE minbase + python3 (tools/image.sh)" \
        "$tar" "$LOCAL_BASE" >/dev/null
    rm -f "$tar"
    local version
    version=$(${DOCKER:-docker} run --rm --network none "$LOCAL_BASE" python -c \
        'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$version" = "$PYTHON_MINOR" ] || die "$LOCAL_BASE has Python $version, not $PYTHON_MINOR"
}

choose_base() {
    if have_image "$PYTHON_IMAGE" || timeout 60 ${DOCKER:-docker} pull -q "$PYTHON_IMAGE" >/dev/null 2>&1; then
        printf '%s' "$PYTHON_IMAGE"; return 0
    fi
    log "$PYTHON_IMAGE cannot be pulled: using the local base $LOCAL_BASE"
    have_image "$LOCAL_BASE" || make_local_base
    printf '%s' "$LOCAL_BASE"
}

ca_bundle() {
    local cert=${PIP_CERT:-}
    [ -n "$cert" ] || cert=$(python3 -m pip config get global.cert 2>/dev/null || true)
    [ -n "$cert" ] || cert=${SSL_CERT_FILE:-}
    if [ -n "$cert" ] && [ -s "$cert" ]; then printf '%s' "$cert"; fi
}

reachable() { curl -fsS -m 15 -o /dev/null "${1%/}/torch/" 2>/dev/null; }

# a torch CPU wheel for the image's Python, in MSDE_WHEELHOUSE or pip's find-links folders
local_torch_wheel() {
    local dirs=() dir
    [ -n "${MSDE_WHEELHOUSE:-}" ] && dirs+=("$MSDE_WHEELHOUSE")
    for dir in ${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true); do
        dirs+=("${dir#file://}")
    done
    for dir in "${dirs[@]}"; do
        [ -d "$dir" ] || continue
        ls -1 "$dir"/torch-*+cpu-cp311-cp311-*linux*x86_64.whl 2>/dev/null | sort -V | tail -n 1
    done | tail -n 1
}

serve_wheelhouse() {  # $1 = wheel; sets WHEEL_INDEX (loopback URL); the server dies with us
    local root port
    root=$(mktemp -d)
    mkdir "$root/torch"
    ln -s "$(readlink -f "$1")" "$root/torch/$(basename "$1")"
    # the same port for the same wheel when it is free: the URL is a build argument, and a
    # new one each time would rebuild the venv layer on every build
    port=$(python3 - "$1" <<'PY'
import socket, sys, zlib
preferred = 20000 + zlib.crc32(sys.argv[1].encode()) % 20000
for port in (preferred, 0):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
PY
)
    python3 -m http.server --bind 127.0.0.1 --directory "$root" "$port" >/dev/null 2>&1 &
    WHEEL_SERVER=$!
    WHEEL_ROOT=$root
    for _ in $(seq 50); do
        curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$port/torch/" 2>/dev/null && break
        sleep 0.1
    done
    WHEEL_INDEX="http://127.0.0.1:$port/"
}

cleanup() {
    if [ -n "${WHEEL_SERVER:-}" ]; then kill "$WHEEL_SERVER" 2>/dev/null || true; fi
    if [ -n "${WHEEL_ROOT:-}" ]; then rm -rf "$WHEEL_ROOT"; fi
}
trap cleanup EXIT

build() {
    local tag="" mar=model_store/msde.mar variant=cpu
    while [ $# -gt 0 ]; do
        case "$1" in
            --tag) tag=$2; shift 2 ;;
            --mar) mar=$2; shift 2 ;;
            --variant) variant=$2; shift 2 ;;
            *) die "unknown argument $1" ;;
        esac
    done
    [ -n "$tag" ] || die "--tag is required"
    [ -f "$mar" ] || die "no archive at $mar (make model, or pass --mar)"
    case "$mar" in model_store/*.mar) ;; *) die "--mar must be model_store/<name>.mar (.dockerignore)" ;; esac

    local client base version args=()
    client=$(docker_client)
    base=$(choose_base)
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
    args+=(--network host --build-arg "PYTHON_IMAGE=$base" --build-arg "MAR=$mar"
           --build-arg "VARIANT=$variant" --build-arg "VERSION=$version")

    local cert
    cert=$(ca_bundle)
    if [ -n "$cert" ]; then
        log "CA bundle $cert goes in as the build secret pip_cert"
        args+=(--secret "id=pip_cert,src=$cert")
    fi

    if [ "$variant" = cpu ]; then
        if reachable "$TORCH_INDEX_URL"; then
            args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
        else
            local wheel locked found
            wheel=$(local_torch_wheel)
            [ -n "$wheel" ] || die "torch CPU index unreachable and no torch-*+cpu wheel in a local wheelhouse (MSDE_WHEELHOUSE)"
            locked=$(sed -n 's/^torch==//p' requirements.lock)
            found=$(basename "$wheel" | cut -d- -f2)
            log "torch CPU index unreachable: torch $found from $(dirname "$wheel") (served on loopback for this build)"
            serve_wheelhouse "$wheel"
            args+=(--build-arg "TORCH_INDEX_URL=$WHEEL_INDEX")
            if [ "${found%+cpu}" != "$locked" ]; then
                log "NOTE: the lock pins torch $locked; this image holds torch $found instead"
                args+=(--build-arg "TORCH_VERSION=${found%+cpu}")
            fi
        fi
    fi

    log "building $tag ($variant, base $base, archive $mar)"
    # shellcheck disable=SC2086
    DOCKER_BUILDKIT=1 $client "${args[@]}" -t "$tag" .
    local size torch
    size=$(${DOCKER:-docker} image inspect --format '{{.Size}}' "$tag")
    torch=$(${DOCKER:-docker} run --rm --network none --entrypoint /opt/venv/bin/python "$tag" \
        -c 'import torch; print(torch.__version__)')
    log "built $tag: $((size / 1000000)) MB, torch $torch, base $base"
}

case "${1:-}" in
    build) shift; build "$@" ;;
    ca-bundle) ca_bundle; echo ;;
    base) have_image "$LOCAL_BASE" && ${DOCKER:-docker} image rm "$LOCAL_BASE" >/dev/null; make_local_base ;;
    *) die "usage: tools/image.sh build --tag TAG [--mar PATH] [--variant cpu|cuda] | base | ca-bundle" ;;
esac
