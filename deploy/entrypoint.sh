#!/usr/bin/env bash
# Start TorchServe in the foreground and stop it gracefully: the container's ENTRYPOINT and
# `make serve` run this same script (configured by environment variables, defaults = local).
#
# Why a script and not `torchserve --foreground` alone:
#  * TorchServe 0.12 drops in-flight requests on SIGTERM (its JVM closes the channels at
#    once) and its Python launcher does not forward signals to the JVM. Here SIGTERM/SIGINT
#    first marks the server as draining (readiness fails), waits until no request is in
#    flight on the inference port (deploy/healthcheck.py drain, bounded by
#    MSDE_DRAIN_TIMEOUT_S), then stops the whole TorchServe process group and exits 0.
#  * TorchServe resolves relative paths and writes key_file.json in its working directory,
#    which is read-only in the container. The script renders an effective config.properties
#    into a writable work directory (relative paths made absolute, listen addresses and
#    models overridable per environment) and runs TorchServe from there; the probes read
#    that same file.
#
# Environment (defaults in brackets):
#   MSDE_TS_CONFIG            base config.properties               [deploy/config.properties]
#   MSDE_MODEL_STORE          model store folder                   [config's model_store]
#   MSDE_MODELS               models to load, name=file.mar,...    [msde=msde.mar]
#   MSDE_LOG_DIR              TorchServe logs                      [logs]
#   MSDE_WORK_DIR             effective config, key file, tmp      [$MSDE_LOG_DIR/run]
#   MSDE_INFERENCE_ADDRESS / MSDE_MANAGEMENT_ADDRESS / MSDE_METRICS_ADDRESS
#                             listen address overrides             [from the config]
#   MSDE_TS_PROPERTIES        extra key=value properties, ';'-separated            []
#   MSDE_TS_ARGS              extra torchserve command-line flags                   []
#   MSDE_TORCHSERVE           torchserve launcher     [torchserve on PATH, else .venv/bin]
#   MSDE_DRAIN_TIMEOUT_S      longest wait for in-flight requests on stop          [30]
#   MSDE_STOP_TIMEOUT_S       longest wait for TorchServe to exit after that       [20]
#   MSDE_STARTUP_TIMEOUT_S    how long the startup log waits for readiness         [300]
# Exit: 0 after a signal-initiated stop; TorchServe's own status if it exits by itself
# (1 if that status was 0: an unasked-for exit is a failure); 2 for a setup error.
set -euo pipefail
# A reader of our output that goes away (Ctrl-C on `make serve | tee log` ends tee first)
# must not kill this script before it has stopped TorchServe: ignore SIGPIPE, and never
# fail on a log line that cannot be written.
trap '' PIPE

log() { printf '%s entrypoint %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2 || true; }
die() { log "ERROR: $*"; exit 2; }

launch_dir=$PWD
abspath() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$launch_dir" "$1" ;; esac; }

ts_config=$(abspath "${MSDE_TS_CONFIG:-deploy/config.properties}")
[ -f "$ts_config" ] || die "config not found: $ts_config (set MSDE_TS_CONFIG)"
log_dir=$(abspath "${MSDE_LOG_DIR:-logs}")
work_dir=$(abspath "${MSDE_WORK_DIR:-$log_dir/run}")
models=${MSDE_MODELS:-msde=msde.mar}
drain_timeout=${MSDE_DRAIN_TIMEOUT_S:-30}
stop_timeout=${MSDE_STOP_TIMEOUT_S:-20}
startup_timeout=${MSDE_STARTUP_TIMEOUT_S:-300}

# the properties file's own value for a key (last one wins, as in TorchServe)
property() { sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$ts_config" | tail -n 1; }

model_store=${MSDE_MODEL_STORE:-$(property model_store)}
[ -n "$model_store" ] || die "no model store: set MSDE_MODEL_STORE or model_store in $ts_config"
model_store=$(abspath "$model_store")
[ -d "$model_store" ] || die "model store not found: $model_store"
IFS=',' read -r -a model_entries <<<"$models"
for entry in "${model_entries[@]}"; do
    file=${entry#*=}
    case "$file" in
        http://* | https://*) ;;
        *) [ -e "$model_store/$file" ] || die "model $file not in $model_store (make archive?)" ;;
    esac
done

torchserve=${MSDE_TORCHSERVE:-}
if [ -z "$torchserve" ]; then
    torchserve=$(command -v torchserve || true)
    [ -n "$torchserve" ] || torchserve="$launch_dir/.venv/bin/torchserve"
fi
[ -x "$torchserve" ] || die "torchserve launcher not found: $torchserve (set MSDE_TORCHSERVE)"
# the probes run on the interpreter TorchServe runs on (the venv's)
python=$(dirname "$torchserve")/python
[ -x "$python" ] || python=$(command -v python3)
healthcheck="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/healthcheck.py"

mkdir -p "$log_dir" "$work_dir/tmp"
rm -f "$work_dir/draining" "$work_dir/warm.json" "$work_dir/key_file.json" \
    "$work_dir/torchserve.pgid"

# -- effective config -----------------------------------------------------------------
overrides=(
    "model_store=$model_store"
    "load_models=$models"
)
for api in inference management metrics; do
    var="MSDE_${api^^}_ADDRESS"
    if [ -n "${!var:-}" ]; then overrides+=("${api}_address=${!var}"); fi
done
if [ -n "${MSDE_TS_PROPERTIES:-}" ]; then
    IFS=';' read -r -a extra_props <<<"$MSDE_TS_PROPERTIES"
    for prop in "${extra_props[@]}"; do
        prop=$(printf '%s' "$prop" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//')
        [ -z "$prop" ] && continue
        case "$prop" in
            *=*) overrides+=("$prop") ;;
            *) die "MSDE_TS_PROPERTIES: '$prop' is not key=value" ;;
        esac
    done
fi
effective="$work_dir/config.properties"
{
    printf '# Rendered by deploy/entrypoint.sh from %s; do not edit.\n' "$ts_config"
    # keep the base file minus overridden keys; make relative file paths absolute
    dropped=$(printf '%s\n' "${overrides[@]}" | cut -d= -f1 | tr '\n' ' ')
    awk -v launch="$launch_dir" -v drop="$dropped" '
        BEGIN { n = split(drop, d, " "); for (i = 1; i <= n; i++) skip[d[i]] = 1 }
        /^[[:space:]]*[#!]/ || !/=/ { print; next }
        {
            key = $0; sub(/[[:space:]]*=.*/, "", key); sub(/^[[:space:]]*/, "", key)
            val = $0; sub(/^[^=]*=[[:space:]]*/, "", val)
            if (key in skip) next
            paths = "^(metrics_config|workflow_store|snapshot_store|plugins_path|keystore|" \
                    "private_key_file|certificate_file)$"
            if (key ~ paths && val != "" && val !~ /^\//) val = launch "/" val
            print key "=" val
        }' "$ts_config"
    printf '%s\n' "${overrides[@]}"
} >"$effective"

# -- run ------------------------------------------------------------------------------
export LOG_LOCATION="$log_dir" METRICS_LOCATION="$log_dir"
export TEMP="$work_dir/tmp" TMPDIR="$work_dir/tmp"  # JVM tmpdir + the launcher's pid file
export MSDE_WORK_DIR="$work_dir"
# token auth (when the config leaves it on) writes key_file.json into the working directory
cd "$work_dir"

read -r -a extra_args <<<"${MSDE_TS_ARGS:-}"
log "starting TorchServe: config $effective, models $models, logs $log_dir"
# own session = own process group: signals from a terminal reach only this script, and the
# stop below reaches the launcher, the JVM and the Python workers together
setsid "$torchserve" --start --foreground --ncs --ts-config "$effective" \
    --model-store "$model_store" "${extra_args[@]}" &
ts_pid=$!
# whatever ends this script (an error under set -e included), TorchServe's group goes with it
trap 'kill -KILL -- "-$ts_pid" 2>/dev/null || true' EXIT
echo "$ts_pid" >"$work_dir/torchserve.pgid"  # for whoever must clean up after a SIGKILL

stopping=0
on_signal() {
    [ "$stopping" = 1 ] && return
    stopping=1
    log "$1 received: draining (readiness now fails), up to ${drain_timeout}s"
    touch "$work_dir/draining"
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

announce_ready() {
    local deadline=$((SECONDS + startup_timeout))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if "$python" "$healthcheck" ready --quiet --work-dir "$work_dir"; then
            log "ready: models ${models} loaded and warmed up"
            return 0
        fi
        sleep 2
    done
    log "WARNING: not ready after ${startup_timeout}s (see $log_dir/ts_log.log)"
}
announce_ready &
announcer=$!

group_alive() { kill -0 -- "-$ts_pid" 2>/dev/null; }

status=0
while true; do
    if wait "$ts_pid"; then status=0; else status=$?; fi
    [ "$stopping" = 1 ] && break  # a trapped signal interrupted wait
    if ! kill -0 "$ts_pid" 2>/dev/null; then
        kill "$announcer" 2>/dev/null || true
        log "TorchServe exited by itself with status $status"
        [ "$status" = 0 ] && status=1
        kill -KILL -- "-$ts_pid" 2>/dev/null || true
        exit "$status"
    fi
done

kill "$announcer" 2>/dev/null || true
if "$python" "$healthcheck" drain --timeout "$drain_timeout" --work-dir "$work_dir"; then
    log "drained: no request in flight"
else
    log "WARNING: drain incomplete after ${drain_timeout}s, stopping anyway"
fi
kill -TERM -- "-$ts_pid" 2>/dev/null || true
deadline=$((SECONDS + stop_timeout))
while group_alive && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
if group_alive; then
    log "WARNING: TorchServe still running after ${stop_timeout}s: SIGKILL"
    kill -KILL -- "-$ts_pid" 2>/dev/null || true
fi
wait "$ts_pid" 2>/dev/null || true
log "stopped"
exit 0
