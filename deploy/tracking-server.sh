#!/usr/bin/env bash
# A shared MLflow tracking server on PostgreSQL, in a folder of its own (no systemd):
#
#   deploy/tracking-server.sh start    # prints: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#   deploy/tracking-server.sh stop
#   deploy/tracking-server.sh status
#
# `start` makes, once, a PostgreSQL cluster in $STATE/pg (initdb; run as the `postgres`
# user when started by root), a database `mlflow` and a user `mlflow` with a generated
# password (kept in $STATE/pg-password, mode 600); starts PostgreSQL on 127.0.0.1:$PG_PORT
# and `mlflow server` on 127.0.0.1:$MLFLOW_PORT with the runs in PostgreSQL (through
# psycopg2) and the artifacts in $STATE/artifacts, served by the server itself
# (clients need no access to that folder); then waits for /health. Again after a stop,
# it starts the same cluster: runs, models and artifacts are kept.
#
# Settings (environment): STATE (default .tracking-server in the project), PG_PORT
# (54329), MLFLOW_PORT (5000), WORKERS (2), MLFLOW (the mlflow command; default the
# project's .venv), MLFLOW_APP (empty; basic-auth: MLflow's users and permissions, kept
# in the same PostgreSQL database through $STATE/basic-auth.ini, see docs/scale-out.md).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${STATE:-$ROOT/.tracking-server}"
PG_PORT="${PG_PORT:-54329}"
PORT_GIVEN="${MLFLOW_PORT:+1}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
WORKERS="${WORKERS:-2}"
MLFLOW="${MLFLOW:-$ROOT/.venv/bin/mlflow}"
MLFLOW_APP="${MLFLOW_APP:-}"

die() { echo "tracking-server: $*" >&2; exit 1; }

pg_bin() {  # Debian keeps initdb and pg_ctl out of PATH, under /usr/lib/postgresql/N/bin
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  if [ -n "$dir" ] && [ -x "$dir/$1" ]; then echo "$dir/$1"; return; fi
  command -v "$1" || die "$1 not found: install PostgreSQL (Debian: make system)"
}

as_pg() {  # PostgreSQL refuses to run as root
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "no postgres user: install PostgreSQL (make system)"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_running() { as_pg "$(pg_bin pg_ctl)" -D "$STATE/pg" status >/dev/null 2>&1; }

healthy() {  # the venv's Python, not curl: nothing more to install
  "$(dirname "$MLFLOW")/python" -c "import sys, urllib.request
try:
    sys.exit(urllib.request.urlopen('$1/health', timeout=5).status != 200)
except OSError:
    sys.exit(1)"
}

start_pg() {
  mkdir -p "$STATE"
  STATE="$(cd "$STATE" && pwd)"
  as_pg test -x "$STATE" || die "the postgres user cannot reach $STATE: every folder above \
it must be open to it (chmod o+x), or set STATE to another folder"
  if [ ! -f "$STATE/pg/PG_VERSION" ]; then
    mkdir -p "$STATE/pg" "$STATE/sock"
    [ "$(id -u)" = 0 ] && chown postgres: "$STATE/pg" "$STATE/sock"
    umask 077
    head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$STATE/pg-password"
    as_pg "$(pg_bin initdb)" -D "$STATE/pg" -U postgres --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 >"$STATE/initdb.log" 2>&1 \
      || die "initdb failed: see $STATE/initdb.log"
    umask 022
    fresh=1
  fi
  if ! pg_running; then
    port_free "$PG_PORT" || die "port $PG_PORT on 127.0.0.1 is taken by another program: \
stop it, or set PG_PORT to a free port"
    as_pg "$(pg_bin pg_ctl)" -D "$STATE/pg" -l "$STATE/pg/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $STATE/sock" start >/dev/null \
      || die "PostgreSQL did not start: see $STATE/pg/server.log"
  fi
  if [ "${fresh:-0}" = 1 ]; then
    as_pg "$(pg_bin psql)" -h "$STATE/sock" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -q \
      -c "CREATE USER mlflow PASSWORD '$(cat "$STATE/pg-password")'" \
      -c "CREATE DATABASE mlflow OWNER mlflow" >/dev/null
  fi
}

port_free() {  # nothing listening on 127.0.0.1:$1 (else its /health could answer for us)
  "$(dirname "$MLFLOW")/python" -c "import socket, sys
s = socket.socket()
sys.exit(s.connect_ex(('127.0.0.1', $1)) == 0)"
}

mlflow_running() {  # our server, by its pid file (a stale pid now another program's is not)
  local pid
  pid="$(cat "$STATE/mlflow.pid" 2>/dev/null)" || return 1
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null \
    | grep -q "mlflow server .*--port $(cat "$STATE/mlflow.port" 2>/dev/null) "
}

preflight() {  # before any work: what `start` needs
  [ -x "$MLFLOW" ] || die "$MLFLOW not found: make setup (or set MLFLOW)"
  if mlflow_running; then
    local running
    running="$(cat "$STATE/mlflow.port")"
    [ -z "$PORT_GIVEN" ] || [ "$running" = "$MLFLOW_PORT" ] || die "already running on \
127.0.0.1:$running, not $MLFLOW_PORT: stop it first to move it"
    MLFLOW_PORT="$running"
    return
  fi
  port_free "$MLFLOW_PORT" || die "port $MLFLOW_PORT on 127.0.0.1 is taken by another \
program (an \`mlflow ui\`?): stop it, or set MLFLOW_PORT to a free port"
}

basic_auth() {  # MLflow's auth app: its users in our PostgreSQL database, not ./basic_auth.db
  local uri="$1"
  (umask 077
   [ -s "$STATE/flask-secret" ] || head -c 32 /dev/urandom | base64 > "$STATE/flask-secret"
   printf '%s\n' "[mlflow]" "default_permission = READ" "database_uri = $uri" \
     "admin_username = admin" \
     "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" \
     > "$STATE/basic-auth.ini")
  # every worker must sign with the same key; the user's own, else one kept in $STATE
  export MLFLOW_FLASK_SERVER_SECRET_KEY="${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(cat "$STATE/flask-secret")}"
  export MLFLOW_AUTH_CONFIG_PATH="$STATE/basic-auth.ini"
}

start_mlflow() {
  local url="http://127.0.0.1:$MLFLOW_PORT"
  if mlflow_running; then
    echo "export MLFLOW_TRACKING_URI=$url"  # already running
    return
  fi
  local uri="postgresql+psycopg2://mlflow:$(cat "$STATE/pg-password")@127.0.0.1:$PG_PORT/mlflow"
  mkdir -p "$STATE/artifacts"
  [ "$MLFLOW_APP" != basic-auth ] || basic_auth "$uri"
  # the server's own process group, so `stop` ends its workers with it; the store's URI
  # (with its password) in the environment, which only this user can read, not in argv.
  # Started in $STATE: whatever it writes where it runs stays there.
  (cd "$STATE" && exec setsid env PATH="$(dirname "$MLFLOW"):$PATH" \
    MLFLOW_BACKEND_STORE_URI="$uri" "$MLFLOW" server \
    --artifacts-destination "$STATE/artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" \
    --workers "$WORKERS" ${MLFLOW_APP:+--app-name "$MLFLOW_APP"} \
    >"$STATE/mlflow.log" 2>&1 < /dev/null) &
  echo $! > "$STATE/mlflow.pid"
  echo "$MLFLOW_PORT" > "$STATE/mlflow.port"
  for _ in $(seq 120); do  # it takes 20-45 s here
    if healthy "$url"; then
      echo "export MLFLOW_TRACKING_URI=$url"
      return
    fi
    kill -0 "$(cat "$STATE/mlflow.pid")" 2>/dev/null || die "mlflow server stopped: \
$(grep -v '^\s*$' "$STATE/mlflow.log" | tail -1) (see $STATE/mlflow.log)"
    sleep 1
  done
  die "mlflow server did not answer $url/health: see $STATE/mlflow.log"
}

stop() {
  if mlflow_running; then  # its process group: the workers too
    kill -- -"$(cat "$STATE/mlflow.pid")" 2>/dev/null || true
  fi
  rm -f "$STATE/mlflow.pid" "$STATE/mlflow.port"
  if [ -f "$STATE/pg/PG_VERSION" ] && pg_running; then
    as_pg "$(pg_bin pg_ctl)" -D "$STATE/pg" -m fast -w stop >/dev/null
  fi
}

case "${1:-}" in
  start) preflight; start_pg; start_mlflow ;;
  stop) stop ;;
  status)
    MLFLOW_PORT="$(cat "$STATE/mlflow.port" 2>/dev/null || echo "$MLFLOW_PORT")"
    pg_running && echo "PostgreSQL: running on 127.0.0.1:$PG_PORT" || echo "PostgreSQL: stopped"
    if healthy "http://127.0.0.1:$MLFLOW_PORT"; then
      echo "mlflow server: http://127.0.0.1:$MLFLOW_PORT"
    else
      echo "mlflow server: not answering on 127.0.0.1:$MLFLOW_PORT"
    fi ;;
  *) die "usage: $0 start|stop|status" ;;
esac
