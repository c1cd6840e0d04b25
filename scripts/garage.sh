#!/usr/bin/env bash
# A single-node Garage S3 server on loopback, for tests and for trying slim against S3.
#
#   scripts/garage.sh start    start it (a no-op when it already runs) and write .garage/env
#   scripts/garage.sh stop     stop it (the data in .garage/ is kept)
#   scripts/garage.sh env      print the export lines: eval "$(scripts/garage.sh env)"
#   scripts/garage.sh status   say whether it runs
#
# Everything lives in .garage/ at the repository root (git-ignored): garage.toml, meta/, data/,
# the generated credentials, garage.log and env. Bucket: slim-test, region: garage, S3 API on
# 127.0.0.1:$SLIM_GARAGE_PORT (default 3900; RPC on the next port, the admin API on port + 3).
#
# When `garage` is missing it is installed with `cargo install garage --locked --version 2.5.0`
# (about 15 minutes); an install already running is waited for instead of started twice.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/.garage"
CONFIG="$DIR/garage.toml"
CREDENTIALS="$DIR/credentials"
PIDFILE="$DIR/garage.pid"
LOG="$DIR/garage.log"
ENVFILE="$DIR/env"

GARAGE_VERSION="2.5.0"
BUCKET="slim-test"
REGION="garage"
S3_PORT="${SLIM_GARAGE_PORT:-3900}"
RPC_PORT=$((S3_PORT + 1))
ADMIN_PORT=$((S3_PORT + 3))
ENDPOINT="http://127.0.0.1:$S3_PORT"
START_TIMEOUT="${SLIM_GARAGE_START_TIMEOUT:-60}"   # seconds to wait for the server
INSTALL_TIMEOUT="${SLIM_GARAGE_INSTALL_TIMEOUT:-3600}"  # seconds to wait for another install

say() { echo "garage.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# The pid of our running server, or nothing.
running_pid() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against a recycled pid: it must still be a garage server using our config.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$CONFIG" || return 1
  echo "$pid"
}

# Prints the path of the garage binary, installing it when needed.
garage_binary() {
  if command -v garage >/dev/null 2>&1; then
    command -v garage
    return
  fi
  local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin/garage"
  if ! [[ -x "$cargo_bin" ]] && pgrep -f 'cargo install garage' >/dev/null 2>&1; then
    say "a 'cargo install garage' is already running; waiting for it (up to ${INSTALL_TIMEOUT}s)"
    local waited=0
    while pgrep -f 'cargo install garage' >/dev/null 2>&1; do
      ((waited >= INSTALL_TIMEOUT)) && die "still waiting for 'cargo install garage' after ${INSTALL_TIMEOUT}s"
      sleep 10
      waited=$((waited + 10))
    done
  fi
  if ! [[ -x "$cargo_bin" ]]; then
    command -v cargo >/dev/null 2>&1 || die "garage is not installed and cargo is missing"
    say "garage is not installed; running 'cargo install garage --locked --version $GARAGE_VERSION' (about 15 minutes)"
    cargo install garage --locked --version "$GARAGE_VERSION" >&2 || die "cargo install garage failed"
  fi
  [[ -x "$cargo_bin" ]] || die "garage is still missing after the install (expected $cargo_bin)"
  echo "$cargo_bin"
}

# Creates the credentials once; they must stay stable because Garage keeps the key in meta/.
ensure_credentials() {
  if [[ ! -f "$CREDENTIALS" ]]; then
    # New credentials cannot be attached to an old key: start from empty storage.
    rm -rf "$DIR/meta" "$DIR/data"
    (
      umask 077
      {
        echo "RPC_SECRET=$(openssl rand -hex 32)"
        echo "ACCESS_KEY=GK$(openssl rand -hex 12)"
        echo "SECRET_KEY=$(openssl rand -hex 32)"
      } >"$CREDENTIALS.tmp"
    )
    mv "$CREDENTIALS.tmp" "$CREDENTIALS"
  fi
  # shellcheck disable=SC1090
  source "$CREDENTIALS"
  [[ -n "${RPC_SECRET:-}" && -n "${ACCESS_KEY:-}" && -n "${SECRET_KEY:-}" ]] ||
    die "$CREDENTIALS is incomplete; delete .garage/ and start again"
}

write_config() {
  (
    umask 077
    cat >"$CONFIG.tmp" <<EOF
# Written by scripts/garage.sh: a single-node test server on loopback.
metadata_dir = "$DIR/meta"
data_dir = "$DIR/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$RPC_SECRET"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$S3_PORT"

[admin]
api_bind_addr = "127.0.0.1:$ADMIN_PORT"
EOF
  )
  mv "$CONFIG.tmp" "$CONFIG"
}

write_env() {
  (
    umask 077
    cat >"$ENVFILE.tmp" <<EOF
export SLIM_S3_ENDPOINT=$ENDPOINT
export SLIM_S3_REGION=$REGION
export SLIM_S3_BUCKET=$BUCKET
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
EOF
  )
  mv "$ENVFILE.tmp" "$ENVFILE"
}

# HTTP status of a URL ("000" when nothing answers).
http_status() {
  curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

# Ready when the cluster reports healthy and the S3 API answers HTTP.
ready() {
  [[ "$(http_status "http://127.0.0.1:$ADMIN_PORT/health")" == "200" ]] &&
    [[ "$(http_status "$ENDPOINT/")" != "000" ]]
}

start() {
  mkdir -p "$DIR"
  local pid
  if pid="$(running_pid)"; then
    ensure_credentials
    [[ -f "$ENVFILE" ]] || write_env
    say "already running (pid $pid) on $ENDPOINT"
    return
  fi
  if [[ "$(http_status "$ENDPOINT/")" != "000" ]]; then
    die "something else already answers on $ENDPOINT; stop it or set SLIM_GARAGE_PORT"
  fi
  command -v curl >/dev/null 2>&1 || die "curl is needed to check that the server answers"
  command -v openssl >/dev/null 2>&1 || die "openssl is needed to generate credentials"

  local garage
  garage="$(garage_binary)"
  rm -f "$ENVFILE"
  ensure_credentials
  mkdir -p "$DIR/meta" "$DIR/data"
  write_config

  say "starting $garage (log: $LOG)"
  echo "---- $(date -u +%Y-%m-%dT%H:%M:%SZ) start" >>"$LOG"
  GARAGE_DEFAULT_ACCESS_KEY="$ACCESS_KEY" \
    GARAGE_DEFAULT_SECRET_KEY="$SECRET_KEY" \
    GARAGE_DEFAULT_BUCKET="$BUCKET" \
    RUST_LOG="${RUST_LOG:-garage=info}" NO_COLOR=1 \
    setsid nohup "$garage" -c "$CONFIG" server --single-node --default-bucket \
    >>"$LOG" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PIDFILE"

  local deadline=$((SECONDS + START_TIMEOUT))
  until ready; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      tail -n 20 "$LOG" >&2 || true
      die "garage exited during startup; see $LOG"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$LOG" >&2 || true
      kill "$pid" 2>/dev/null || true
      rm -f "$PIDFILE"
      die "garage did not answer on $ENDPOINT within ${START_TIMEOUT}s; see $LOG"
    fi
    sleep 0.5
  done
  write_env
  say "running (pid $pid): S3 on $ENDPOINT, region $REGION, bucket $BUCKET; credentials in $ENVFILE"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PIDFILE" "$ENVFILE"
    say "not running"
    return
  fi
  kill "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "garage (pid $pid) did not stop within 10s; killing it"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE" "$ENVFILE"
  say "stopped (pid $pid)"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
env)
  [[ -f "$ENVFILE" ]] && running_pid >/dev/null || die "Garage is not running: start it with scripts/garage.sh start"
  cat "$ENVFILE"
  ;;
status)
  if pid="$(running_pid)"; then
    echo "running (pid $pid) on $ENDPOINT"
  else
    echo "not running"
    exit 1
  fi
  ;;
*)
  echo "usage: $0 start|stop|env|status" >&2
  exit 2
  ;;
esac
