#!/usr/bin/env bash
# Load comparison: the same tiny upstream measured directly, through fusebox,
# through nginx and through HAProxy (all single-threaded), with wrk. Also
# "floor": hyper's server in front of fusebox's upstream pool with no fusebox
# logic (examples/hyper_floor.rs), which shows what hyper itself costs.
# Besides req/s and latency, each proxy's CPU time per request (user + sys,
# from /proc) is printed: on a shared, noisy machine it is steadier than req/s.
#
#   bash benches/load/compare.sh
#
# Environment (all optional):
#   DURATION=10s            wrk -d per measured run (wrk syntax: 10s, 1m, ...)
#   CONNECTIONS="32 256"    connection counts, space or comma separated
#   THREADS=1               wrk -t
#   TARGETS="direct fusebox floor nginx haproxy"   which targets to measure
#   WARMUP=2s               unmeasured wrk run per target before measuring (0 = none)
#   WRK_TIMEOUT=2s          wrk --timeout (slower responses count as timeouts)
#   STARTUP_TIMEOUT=10      seconds each server gets to become ready
#   FUSEBOX_BIN=target/release/fusebox   binary under test (relative to the repo root)
#   FUSEBOX_LOG=warn        RUST_LOG for fusebox (no per-request logging, like the others)
#   KEEP_TMP=1              keep the temp dir (configs, logs, raw wrk output)
#
# Output: progress on stderr; the results table, ratios and one
# "RESULT ..." / "RATIO ..." line per measurement on stdout.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-32 256}"
CONNECTIONS="${CONNECTIONS//,/ }"
THREADS="${THREADS:-1}"
TARGETS="${TARGETS:-direct fusebox floor nginx haproxy}"
TARGETS="${TARGETS//,/ }"
WARMUP="${WARMUP:-2s}"
WRK_TIMEOUT="${WRK_TIMEOUT:-2s}"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-10}"
FUSEBOX_BIN="${FUSEBOX_BIN:-target/release/fusebox}"
FUSEBOX_LOG="${FUSEBOX_LOG:-warn}"
KEEP_TMP="${KEEP_TMP:-0}"

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------- processes

PIDS=()
TMP=""
WRK_PID=""

stop_pid() {
  local pid=$1 children i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    # nginx workers are children of the master: a master killed hard would
    # leave them behind, so end them too.
    children="$(pgrep -P "$pid" 2>/dev/null || true)"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $children; do
      kill -KILL "$i" 2>/dev/null || true
    done
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  if [[ -n "$WRK_PID" ]]; then
    stop_pid "$WRK_PID"
  fi
  for pid in "${PIDS[@]}"; do
    stop_pid "$pid"
  done
  if [[ -n "$TMP" && -d "$TMP" ]]; then
    if [[ "$KEEP_TMP" == 1 ]]; then
      log "kept temp dir $TMP"
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ helpers

have() { command -v "$1" >/dev/null 2>&1; }

APT_UPDATED=0
ensure_tools() {
  # command -> Debian package
  local -A pkg=([wrk]=wrk [nginx]=nginx [haproxy]=haproxy [curl]=curl)
  local need=() cmd
  for cmd in wrk curl; do
    have "$cmd" || need+=("${pkg[$cmd]}")
  done
  for cmd in nginx haproxy; do
    # nginx also serves the tiny upstream, so it is always needed.
    if [[ "$cmd" == nginx || " $TARGETS " == *" $cmd "* ]]; then
      have "$cmd" || need+=("${pkg[$cmd]}")
    fi
  done
  if ((${#need[@]} == 0)); then return 0; fi
  if [[ "$(id -u)" -eq 0 ]] && have apt-get; then
    if [[ "$APT_UPDATED" == 0 ]]; then
      log "apt-get update"
      apt-get update -qq >&2
      APT_UPDATED=1
    fi
    log "installing: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
    for cmd in wrk curl nginx haproxy; do
      if [[ " ${need[*]} " == *" ${pkg[$cmd]} "* ]] && ! have "$cmd"; then
        die "$cmd is still not on PATH after apt-get install ${pkg[$cmd]}"
      fi
    done
  else
    die "missing: ${need[*]} (install them, e.g. apt-get install -y ${need[*]})"
  fi
}

# wrk duration (10s, 1m, 2h, or bare seconds) -> whole seconds
dur_secs() {
  local d=$1
  case "$d" in
    *ms) echo 1 ;;
    *s) echo "${d%s}" ;;
    *m) echo $((${d%m} * 60)) ;;
    *h) echo $((${d%h} * 3600)) ;;
    *) echo "$d" ;;
  esac
}

is_zero_dur() { [[ "$1" =~ ^0+(s|m|h|ms)?$ ]]; }

# N free TCP ports on 127.0.0.1
pick_ports() {
  local n=$1
  if have python3; then
    python3 - "$n" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
  else
    # Fixed high ports, skipping any that something already listens on.
    local p=18080 got=()
    while ((${#got[@]} < n && p < 18200)); do
      if ! (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        got+=("$p")
      fi
      p=$((p + 1))
    done
    ((${#got[@]} == n)) || die "no free ports in 18080-18199"
    echo "${got[*]}"
  fi
}

# render TEMPLATE OUT KEY=VALUE...
render() {
  local in=$1 out=$2 kv sed_args=()
  shift 2
  for kv in "$@"; do
    sed_args+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
  done
  sed "${sed_args[@]}" "$in" >"$out"
  if grep -q '@[A-Z_]*@' "$out"; then
    die "unfilled placeholder in $out"
  fi
}

# wait_http URL PID TIMEOUT_S: 0 once URL answers 2xx, 1 on timeout or if PID died
wait_http() {
  local url=$1 pid=$2 timeout=$3 deadline
  deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    if curl -sf -o /dev/null --max-time 1 "$url"; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# check_ok URL: the target answers 200 with the upstream's body
check_ok() {
  local url=$1 body
  body="$(curl -s --max-time 2 -w ' %{http_code}' "$url" || true)"
  [[ "$body" == $'ok\n 200' ]]
}

# start_bg NAME LOGFILE CMD...: start CMD in the background, record its pid in LAST_PID
LAST_PID=""
start_bg() {
  local name=$1 logf=$2
  shift 2
  "$@" >"$logf" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  log "started $name (pid $LAST_PID)"
}

start_nginx() {
  local name=$1 template=$2 port=$3 prefix="$TMP/$1"
  mkdir -p "$prefix"
  render "$template" "$prefix/nginx.conf" \
    PREFIX="$prefix" PROXY_PORT="$port" UPSTREAM_PORT="$UPSTREAM_PORT"
  # -e: error log before the config is read; -g: stay in the foreground so
  # the pid we hold is the master's.
  start_bg "$name" "$prefix/stdout.log" \
    nginx -p "$prefix/" -e "$prefix/error.log" -c "$prefix/nginx.conf" -g 'daemon off;'
}

dump_log() {
  local f=$1
  if [[ -s "$f" ]]; then
    printf -- '--- last lines of %s ---\n' "$f" >&2
    tail -n 20 "$f" >&2
    printf -- '---\n' >&2
  fi
}

# ------------------------------------------------------------- wrk parsing

# to_ms VALUE: wrk time (e.g. 812.00us, 1.23ms, 2.01s, 1.00m) -> milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (match(v, /^[0-9.]+/) == 0) { print "NA"; exit }
    n = substr(v, 1, RLENGTH); u = substr(v, RLENGTH + 1)
    if (u == "us") f = 0.001; else if (u == "ms") f = 1; else if (u == "s") f = 1000;
    else if (u == "m") f = 60000; else if (u == "h") f = 3600000; else { print "NA"; exit }
    printf "%.3f", n * f
  }'
}

# parse_wrk FILE -> "rps p50_ms p99_ms errors non2xx"
parse_wrk() {
  local f=$1 rps p50 p99 errs non2xx
  rps="$(awk '/^Requests\/sec:/ { printf "%.2f", $2 }' "$f")"
  p50="$(awk '/Latency Distribution/ { d = 1; next } d && $1 == "50%" { print $2; exit }' "$f")"
  p99="$(awk '/Latency Distribution/ { d = 1; next } d && $1 == "99%" { print $2; exit }' "$f")"
  # "Socket errors: connect 0, read 0, write 0, timeout 0"
  errs="$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$f")"
  non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$f")"
  [[ -n "$rps" && -n "$p50" && -n "$p99" ]] || return 1
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") ${errs:-0} ${non2xx:-0}"
}

# ---------------------------------------------------------------- the run

for t in $TARGETS; do
  case "$t" in
    direct | fusebox | floor | nginx | haproxy) ;;
    *) die "unknown target '$t' (known: direct fusebox floor nginx haproxy)" ;;
  esac
done
for c in $CONNECTIONS; do
  [[ "$c" =~ ^[1-9][0-9]*$ ]] || die "bad connection count '$c'"
done
[[ "$DURATION" =~ ^[0-9]+(s|m|h)?$ ]] || die "bad DURATION '$DURATION' (e.g. 10s, 1m)"
[[ "$WARMUP" =~ ^[0-9]+(s|m|h)?$ ]] || die "bad WARMUP '$WARMUP' (e.g. 2s, 0)"
[[ -n "${TARGETS// /}" ]] || die "TARGETS is empty"
[[ -n "${CONNECTIONS// /}" ]] || die "CONNECTIONS is empty"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "bad THREADS '$THREADS'"
[[ "$STARTUP_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "bad STARTUP_TIMEOUT '$STARTUP_TIMEOUT'"

ensure_tools

# Plenty of file descriptors for 256+ connections on each side of a proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TMP="$(mktemp -d "${TMPDIR:-/tmp}/fusebox-load.XXXXXX")"
# nginx workers run as "nobody" when started by root: let them see their prefix.
chmod 755 "$TMP"
log "temp dir $TMP"

read -r UPSTREAM_PORT NGINX_PORT HAPROXY_PORT FUSEBOX_PORT FUSEBOX_ADMIN_PORT FLOOR_PORT <<<"$(pick_ports 6)"

declare -A URL=()
# The process whose CPU time is charged to each proxy (nginx: the master,
# whose worker is added as its child).
declare -A PID=()
declare -A SKIP=()
ACTIVE=()

# The tiny upstream.
start_nginx upstream "$SCRIPT_DIR/upstream.nginx.conf.in" "$UPSTREAM_PORT"
UP_PID=$LAST_PID
if ! wait_http "http://127.0.0.1:$UPSTREAM_PORT/" "$UP_PID" "$STARTUP_TIMEOUT"; then
  dump_log "$TMP/upstream/error.log"
  dump_log "$TMP/upstream/stdout.log"
  die "the tiny upstream (nginx) did not start"
fi
URL[direct]="http://127.0.0.1:$UPSTREAM_PORT/"

for t in $TARGETS; do
  case "$t" in
    direct) ;;
    nginx)
      start_nginx nginx "$SCRIPT_DIR/proxy.nginx.conf.in" "$NGINX_PORT"
      PID[nginx]=$LAST_PID
      if wait_http "http://127.0.0.1:$NGINX_PORT/" "$LAST_PID" "$STARTUP_TIMEOUT"; then
        URL[nginx]="http://127.0.0.1:$NGINX_PORT/"
      else
        dump_log "$TMP/nginx/error.log"
        SKIP[nginx]="nginx did not start within ${STARTUP_TIMEOUT}s"
      fi
      ;;
    haproxy)
      mkdir -p "$TMP/haproxy"
      render "$SCRIPT_DIR/haproxy.cfg.in" "$TMP/haproxy/haproxy.cfg" \
        PROXY_PORT="$HAPROXY_PORT" UPSTREAM_PORT="$UPSTREAM_PORT"
      # -db: foreground, so the pid we hold is HAProxy itself.
      start_bg haproxy "$TMP/haproxy/haproxy.log" haproxy -db -f "$TMP/haproxy/haproxy.cfg"
      PID[haproxy]=$LAST_PID
      if wait_http "http://127.0.0.1:$HAPROXY_PORT/" "$LAST_PID" "$STARTUP_TIMEOUT"; then
        URL[haproxy]="http://127.0.0.1:$HAPROXY_PORT/"
      else
        dump_log "$TMP/haproxy/haproxy.log"
        SKIP[haproxy]="HAProxy did not start within ${STARTUP_TIMEOUT}s"
      fi
      ;;
    fusebox)
      bin="$FUSEBOX_BIN"
      [[ "$bin" == /* ]] || bin="$REPO_ROOT/$bin"
      if [[ ! -x "$bin" && "$bin" == "$REPO_ROOT/target/release/fusebox" ]]; then
        if have cargo; then
          log "$bin missing: cargo build --release"
          if ! (cd "$REPO_ROOT" && cargo build --release) >&2; then
            warn "cargo build --release failed"
          fi
        else
          warn "cargo not found, cannot build $bin"
        fi
      fi
      if [[ ! -x "$bin" ]]; then
        SKIP[fusebox]="binary $bin not found"
      else
        mkdir -p "$TMP/fusebox"
        render "$SCRIPT_DIR/fusebox.yaml.in" "$TMP/fusebox/fusebox.yaml" \
          PROXY_PORT="$FUSEBOX_PORT" ADMIN_PORT="$FUSEBOX_ADMIN_PORT" UPSTREAM_PORT="$UPSTREAM_PORT"
        start_bg fusebox "$TMP/fusebox/fusebox.log" \
          env RUST_LOG="$FUSEBOX_LOG" "$bin" run -c "$TMP/fusebox/fusebox.yaml"
        PID[fusebox]=$LAST_PID
        if wait_http "http://127.0.0.1:$FUSEBOX_ADMIN_PORT/readyz" "$LAST_PID" "$STARTUP_TIMEOUT"; then
          URL[fusebox]="http://127.0.0.1:$FUSEBOX_PORT/"
        else
          if kill -0 "$LAST_PID" 2>/dev/null; then
            SKIP[fusebox]="fusebox did not answer 200 on http://127.0.0.1:$FUSEBOX_ADMIN_PORT/readyz within ${STARTUP_TIMEOUT}s"
            # Do not let it take CPU from the measured targets.
            stop_pid "$LAST_PID"
          else
            rc=0
            wait "$LAST_PID" || rc=$?
            SKIP[fusebox]="fusebox exited (status $rc) before http://127.0.0.1:$FUSEBOX_ADMIN_PORT/readyz answered 200"
          fi
          dump_log "$TMP/fusebox/fusebox.log"
        fi
      fi
      ;;
    floor)
      bin="$REPO_ROOT/target/release/examples/hyper_floor"
      if [[ ! -x "$bin" ]] && have cargo; then
        log "$bin missing: cargo build --release --example hyper_floor"
        (cd "$REPO_ROOT" && cargo build --release --example hyper_floor) >&2 || warn "building hyper_floor failed"
      fi
      if [[ ! -x "$bin" ]]; then
        SKIP[floor]="binary $bin not found"
      else
        start_bg floor "$TMP/floor.log" "$bin" "127.0.0.1:$FLOOR_PORT" "http://127.0.0.1:$UPSTREAM_PORT"
        PID[floor]=$LAST_PID
        if wait_http "http://127.0.0.1:$FLOOR_PORT/" "$LAST_PID" "$STARTUP_TIMEOUT"; then
          URL[floor]="http://127.0.0.1:$FLOOR_PORT/"
        else
          dump_log "$TMP/floor.log"
          SKIP[floor]="hyper_floor did not answer within ${STARTUP_TIMEOUT}s"
        fi
      fi
      ;;
  esac
  if [[ -z "${SKIP[$t]:-}" ]] && ! check_ok "${URL[$t]}"; then
    SKIP[$t]="${URL[$t]} does not answer 200 \"ok\" (got: $(curl -s --max-time 2 -w ' [%{http_code}]' "${URL[$t]}" 2>&1 | tr '\n' ' ' | cut -c1-120))"
  fi
  if [[ -n "${SKIP[$t]:-}" ]]; then
    warn "skipping $t: ${SKIP[$t]}"
  else
    ACTIVE+=("$t")
  fi
done

((${#ACTIVE[@]} > 0)) || die "no target could be started"

max_conns=0
for c in $CONNECTIONS; do
  if ((c > max_conns)); then max_conns=$c; fi
done

# Every load run is bounded: wrk's own duration plus a margin, then killed.
run_wrk() {
  local conns=$1 dur=$2 url=$3 out=$4 limit
  limit=$(($(dur_secs "$dur") + 30))
  # In the background + wait, so a signal to this script is handled at once
  # (cleanup ends the load run too) instead of after the run.
  timeout -k 5 "$limit" wrk -t"$THREADS" -c"$conns" -d"$dur" --timeout "$WRK_TIMEOUT" --latency "$url" >"$out" 2>&1 &
  WRK_PID=$!
  local rc=0
  wait "$WRK_PID" || rc=$?
  WRK_PID=""
  return "$rc"
}

if ! is_zero_dur "$WARMUP"; then
  for t in "${ACTIVE[@]}"; do
    log "warm-up $t: ${WARMUP} at ${max_conns} connections"
    run_wrk "$max_conns" "$WARMUP" "${URL[$t]}" "$TMP/warmup-$t.txt" ||
      warn "warm-up of $t failed (see $TMP/warmup-$t.txt)"
  done
fi

# cpu_ticks PID: user + sys clock ticks of PID and its children (nginx's
# worker), 0 if gone.
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
    if [[ -r "/proc/$p/stat" ]]; then
      # Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
      total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
    fi
  done
  echo "$total"
}
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"

declare -A RPS=() P50=() P99=() ERRS=() NON2XX=() CPU=()
for c in $CONNECTIONS; do
  for t in "${ACTIVE[@]}"; do
    out="$TMP/wrk-$t-$c.txt"
    log "measuring $t: ${c} connections, ${DURATION} (${URL[$t]})"
    ticks0=""
    if [[ -n "${PID[$t]:-}" ]]; then ticks0="$(cpu_ticks "${PID[$t]}")"; fi
    if ! run_wrk "$c" "$DURATION" "${URL[$t]}" "$out"; then
      warn "wrk failed for $t at $c connections:"
      dump_log "$out"
      continue
    fi
    if ! parsed="$(parse_wrk "$out")"; then
      warn "could not parse wrk output for $t at $c connections:"
      dump_log "$out"
      continue
    fi
    read -r "RPS[$t:$c]" "P50[$t:$c]" "P99[$t:$c]" "ERRS[$t:$c]" "NON2XX[$t:$c]" <<<"$parsed"
    requests="$(awk '/requests in/ { print $1; exit }' "$out")"
    if [[ -n "$ticks0" && -n "$requests" && "$requests" -gt 0 ]]; then
      CPU[$t:$c]="$(awk -v d="$(($(cpu_ticks "${PID[$t]}") - ticks0))" -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", d / hz / n * 1e6 }')"
    fi
    if ((${ERRS[$t:$c]} > 0 || ${NON2XX[$t:$c]} > 0)); then
      warn "$t at $c connections: ${ERRS[$t:$c]} socket errors, ${NON2XX[$t:$c]} non-2xx responses"
    fi
  done
done

# ----------------------------------------------------------------- report

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'
}

cpus="$(nproc 2>/dev/null || echo '?')"
echo
echo "fusebox load comparison: wrk -t${THREADS} -d${DURATION} --latency, ${cpus} CPUs, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
versions="nginx $(nginx -v 2>&1 | sed 's|.*nginx/||' || true)"
if have haproxy; then
  versions+=", HAProxy $(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }' || true)"
fi
printf '%s\n' "upstream: nginx, worker_processes 1, return 200 \"ok\\n\" (${versions})"
echo
printf '%-8s %6s %12s %10s %10s %12s %8s\n' target conns 'req/s' 'p50 ms' 'p99 ms' 'cpu us/req' errors
printf '%-8s %6s %12s %10s %10s %12s %8s\n' -------- ------ ------------ ---------- ---------- ------------ --------
for c in $CONNECTIONS; do
  for t in $TARGETS; do
    k="$t:$c"
    if [[ -n "${RPS[$k]:-}" ]]; then
      printf '%-8s %6s %12s %10s %10s %12s %8s\n' "$t" "$c" "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}" "${CPU[$k]:--}" \
        "$((${ERRS[$k]} + ${NON2XX[$k]}))"
    else
      printf '%-8s %6s %12s %10s %10s %12s %8s\n' "$t" "$c" skipped - - - -
    fi
  done
done

if [[ " $TARGETS " == *" fusebox "* ]]; then
  echo
  echo "ratios (fusebox / other; req/s higher is better, latency and cpu lower is better)"
  printf '%-18s %6s %8s %8s %8s %8s\n' pair conns 'req/s' p50 p99 cpu
  for c in $CONNECTIONS; do
    for o in direct floor nginx haproxy; do
      [[ " $TARGETS " == *" $o "* ]] || continue
      printf '%-18s %6s %8s %8s %8s %8s\n' "fusebox/$o" "$c" \
        "$(ratio "${RPS[fusebox:$c]:-}" "${RPS[$o:$c]:-}")" \
        "$(ratio "${P50[fusebox:$c]:-}" "${P50[$o:$c]:-}")" \
        "$(ratio "${P99[fusebox:$c]:-}" "${P99[$o:$c]:-}")" \
        "$(ratio "${CPU[fusebox:$c]:-}" "${CPU[$o:$c]:-}")"
    done
  done
fi

echo
for c in $CONNECTIONS; do
  for t in $TARGETS; do
    k="$t:$c"
    if [[ -n "${RPS[$k]:-}" ]]; then
      echo "RESULT target=$t conns=$c threads=$THREADS duration=$DURATION rps=${RPS[$k]} p50_ms=${P50[$k]} p99_ms=${P99[$k]} cpu_us_per_req=${CPU[$k]:-na} socket_errors=${ERRS[$k]} non2xx=${NON2XX[$k]}"
    else
      reason="${SKIP[$t]:-wrk run failed}"
      echo "RESULT target=$t conns=$c status=skipped reason=\"${reason//\"/\'}\""
    fi
  done
done
for c in $CONNECTIONS; do
  for o in direct floor nginx haproxy; do
    [[ " $TARGETS " == *" fusebox "* && " $TARGETS " == *" $o "* ]] || continue
    [[ -n "${RPS[fusebox:$c]:-}" && -n "${RPS[$o:$c]:-}" ]] || continue
    echo "RATIO pair=fusebox/$o conns=$c rps=$(ratio "${RPS[fusebox:$c]}" "${RPS[$o:$c]}") p50=$(ratio "${P50[fusebox:$c]}" "${P50[$o:$c]}") p99=$(ratio "${P99[fusebox:$c]}" "${P99[$o:$c]}") cpu=$(ratio "${CPU[fusebox:$c]:-}" "${CPU[$o:$c]:-}")"
  done
done

if [[ " $TARGETS " == *" fusebox "* && -n "${SKIP[fusebox]:-}" ]]; then
  echo
  echo "NOTE: fusebox was skipped: ${SKIP[fusebox]}"
fi
