#!/usr/bin/env bash
# Load comparison: the same tiny upstream measured directly, through fusebox,
# through nginx and through HAProxy (all single-threaded), with wrk. Also
# "floor": hyper's server in front of fusebox's upstream pool with no fusebox
# logic (examples/hyper_floor.rs), which shows what hyper itself costs.
# Besides req/s and latency, each proxy's CPU time per request (user + sys,
# from /proc) is printed: on a shared, noisy machine it is steadier than req/s.
# Each proxy's idle and loaded RSS are always printed; CALLGRIND=1 adds
# user-space instructions per request (each proxy rerun alone under
# callgrind), STRACE=1 syscalls per request (strace -c on the running proxy).
#
#   bash benches/load/compare.sh
#
# Environment (all optional):
#   DURATION=10s            wrk -d per measured run (wrk syntax: 10s, 1m, ...)
#   CONNECTIONS="32 256"    connection counts, space or comma separated
#   THREADS=1               wrk -t
#   WORKERS=1               workers of every proxy (fusebox `workers`, nginx
#                           `worker_processes`, HAProxy `nbthread`); floor has one
#   TARGETS="direct fusebox floor nginx haproxy"   which targets to measure
#   WARMUP=2s               unmeasured wrk run per target before measuring (0 = none)
#   WRK_TIMEOUT=2s          wrk --timeout (slower responses count as timeouts)
#   STARTUP_TIMEOUT=10      seconds each server gets to become ready
#   FUSEBOX_BIN=target/release/fusebox   binary under test (relative to the repo root)
#   FUSEBOX_LOG=warn        RUST_LOG for fusebox (no per-request logging, like the others)
#   FLOOR_BIN=target/release/examples/hyper_floor   the floor target's binary
#   KEEP_TMP=1              keep the temp dir (configs, logs, raw wrk output)
#   IDLE_REQUESTS=10        requests sent to each proxy before its idle RSS is read
#   STRACE=1                also count syscalls per request (strace -c -f, one run per proxy)
#   STRACE_CONNECTIONS=32   wrk -c of the strace run
#   STRACE_DURATION=5s      wrk -d of the strace run
#   CALLGRIND=1             also count instructions per request (valgrind --tool=callgrind)
#   CALLGRIND_CONNECTIONS=32  wrk -c of the callgrind run
#   CALLGRIND_DURATION=10s  wrk -d of the counted callgrind run (after a CALLGRIND_WARMUP=2s one)
#   CALLGRIND_STARTUP_TIMEOUT=120  seconds a proxy under valgrind gets to become ready
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
WORKERS="${WORKERS:-1}"
TARGETS="${TARGETS:-direct fusebox floor nginx haproxy}"
TARGETS="${TARGETS//,/ }"
WARMUP="${WARMUP:-2s}"
WRK_TIMEOUT="${WRK_TIMEOUT:-2s}"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-10}"
FUSEBOX_BIN="${FUSEBOX_BIN:-target/release/fusebox}"
FUSEBOX_LOG="${FUSEBOX_LOG:-warn}"
FLOOR_BIN="${FLOOR_BIN:-target/release/examples/hyper_floor}"
KEEP_TMP="${KEEP_TMP:-0}"
IDLE_REQUESTS="${IDLE_REQUESTS:-10}"
STRACE="${STRACE:-0}"
STRACE_CONNECTIONS="${STRACE_CONNECTIONS:-32}"
STRACE_DURATION="${STRACE_DURATION:-5s}"
CALLGRIND="${CALLGRIND:-0}"
CALLGRIND_CONNECTIONS="${CALLGRIND_CONNECTIONS:-32}"
CALLGRIND_DURATION="${CALLGRIND_DURATION:-10s}"
CALLGRIND_WARMUP="${CALLGRIND_WARMUP:-2s}"
CALLGRIND_STARTUP_TIMEOUT="${CALLGRIND_STARTUP_TIMEOUT:-120}"

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
  local -A pkg=([wrk]=wrk [nginx]=nginx [haproxy]=haproxy [curl]=curl [strace]=strace [valgrind]=valgrind [callgrind_control]=valgrind)
  local need=() cmd
  for cmd in wrk curl; do
    have "$cmd" || need+=("${pkg[$cmd]}")
  done
  if [[ "$STRACE" == 1 ]]; then have strace || need+=(strace); fi
  if [[ "$CALLGRIND" == 1 ]]; then
    if ! have valgrind || ! have callgrind_control; then need+=(valgrind); fi
  fi
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
    for cmd in wrk curl nginx haproxy strace valgrind callgrind_control; do
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

# Binaries (relative paths are from the repo root), built when missing.
abs_bin() { if [[ "$1" == /* ]]; then echo "$1"; else echo "$REPO_ROOT/$1"; fi; }
FUSEBOX_BIN_ABS="$(abs_bin "$FUSEBOX_BIN")"
FLOOR_BIN_ABS="$(abs_bin "$FLOOR_BIN")"

# target_cmd TARGET PORT ADMIN_PORT DIR SINGLE: write TARGET's config into DIR
# and set T_ENV (environment), T_ARGV (command), T_URL (what wrk loads) and
# T_READY (2xx once it is up). SINGLE=1: one process doing all the work
# (nginx with master_process off), for valgrind.
T_ENV=()
T_ARGV=()
T_URL=""
T_READY=""
target_cmd() {
  local t=$1 port=$2 admin=$3 dir=$4 single=$5 g
  mkdir -p "$dir"
  T_ENV=()
  T_URL="http://127.0.0.1:$port/"
  T_READY="$T_URL"
  case "$t" in
    nginx)
      render "$SCRIPT_DIR/proxy.nginx.conf.in" "$dir/nginx.conf" \
        PREFIX="$dir" PROXY_PORT="$port" UPSTREAM_PORT="$UPSTREAM_PORT" WORKERS="$WORKERS"
      # -e: error log before the config is read; -g: stay in the foreground so
      # the pid we hold is the master's (or, single, the only process).
      g='daemon off;'
      if [[ "$single" == 1 ]]; then g='daemon off; master_process off;'; fi
      T_ARGV=(nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" -g "$g")
      ;;
    haproxy)
      render "$SCRIPT_DIR/haproxy.cfg.in" "$dir/haproxy.cfg" \
        PROXY_PORT="$port" UPSTREAM_PORT="$UPSTREAM_PORT" WORKERS="$WORKERS"
      # -db: foreground, so the pid we hold is HAProxy itself.
      T_ARGV=(haproxy -db -f "$dir/haproxy.cfg")
      ;;
    fusebox)
      render "$SCRIPT_DIR/fusebox.yaml.in" "$dir/fusebox.yaml" \
        PROXY_PORT="$port" ADMIN_PORT="$admin" UPSTREAM_PORT="$UPSTREAM_PORT" WORKERS="$WORKERS"
      T_ENV=(RUST_LOG="$FUSEBOX_LOG")
      T_ARGV=("$FUSEBOX_BIN_ABS" run -c "$dir/fusebox.yaml")
      T_READY="http://127.0.0.1:$admin/readyz"
      ;;
    floor)
      T_ARGV=("$FLOOR_BIN_ABS" "127.0.0.1:$port" "http://127.0.0.1:$UPSTREAM_PORT")
      ;;
  esac
}

for t in $TARGETS; do
  case "$t" in
    direct) ;;
    fusebox)
      if [[ ! -x "$FUSEBOX_BIN_ABS" && "$FUSEBOX_BIN_ABS" == "$REPO_ROOT/target/release/fusebox" ]]; then
        if have cargo; then
          log "$FUSEBOX_BIN_ABS missing: cargo build --release"
          if ! (cd "$REPO_ROOT" && cargo build --release) >&2; then
            warn "cargo build --release failed"
          fi
        else
          warn "cargo not found, cannot build $FUSEBOX_BIN_ABS"
        fi
      fi
      if [[ ! -x "$FUSEBOX_BIN_ABS" ]]; then
        SKIP[fusebox]="binary $FUSEBOX_BIN_ABS not found"
      fi
      ;;
    floor)
      if [[ ! -x "$FLOOR_BIN_ABS" && "$FLOOR_BIN_ABS" == "$REPO_ROOT/target/release/examples/hyper_floor" ]] && have cargo; then
        log "$FLOOR_BIN_ABS missing: cargo build --release --example hyper_floor"
        (cd "$REPO_ROOT" && cargo build --release --example hyper_floor) >&2 || warn "building hyper_floor failed"
      fi
      if [[ ! -x "$FLOOR_BIN_ABS" ]]; then
        SKIP[floor]="binary $FLOOR_BIN_ABS not found"
      fi
      ;;
  esac
  if [[ "$t" != direct && -z "${SKIP[$t]:-}" ]]; then
    case "$t" in
      nginx) port=$NGINX_PORT ;;
      haproxy) port=$HAPROXY_PORT ;;
      fusebox) port=$FUSEBOX_PORT ;;
      floor) port=$FLOOR_PORT ;;
    esac
    target_cmd "$t" "$port" "$FUSEBOX_ADMIN_PORT" "$TMP/$t" 0
    start_bg "$t" "$TMP/$t/$t.log" env "${T_ENV[@]}" "${T_ARGV[@]}"
    PID[$t]=$LAST_PID
    if wait_http "$T_READY" "$LAST_PID" "$STARTUP_TIMEOUT"; then
      URL[$t]="$T_URL"
    else
      if kill -0 "$LAST_PID" 2>/dev/null; then
        SKIP[$t]="$t did not answer 2xx on $T_READY within ${STARTUP_TIMEOUT}s"
        # Do not let it take CPU from the measured targets.
        stop_pid "$LAST_PID"
      else
        rc=0
        wait "$LAST_PID" || rc=$?
        SKIP[$t]="$t exited (status $rc) before $T_READY answered 2xx"
      fi
      dump_log "$TMP/$t/error.log"
      dump_log "$TMP/$t/$t.log"
    fi
  fi
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

# ---------------------------------------------------------------- memory

# work_pid TARGET: the process that serves TARGET's requests (nginx: the
# worker, not the master).
work_pid() {
  local t=$1 p=${PID[$1]:-}
  if [[ "$t" == nginx && -n "$p" ]]; then
    p="$(pgrep -P "$p" 2>/dev/null | head -n 1 || true)"
  fi
  echo "$p"
}

# status_kb PID FIELD: FIELD (VmRSS, VmHWM) from /proc/PID/status in kB, empty if gone
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

declare -A IDLE_RSS=() LOADED_RSS=() END_RSS=() NTHREADS=()
# Idle RSS: after start and a few requests (pool connections open, lazy
# initialisation done), before any load.
for t in "${ACTIVE[@]}"; do
  [[ "$t" == direct ]] && continue
  for ((i = 0; i < IDLE_REQUESTS; i++)); do
    curl -s -o /dev/null --max-time 2 "${URL[$t]}" || true
  done
done
sleep 1
for t in "${ACTIVE[@]}"; do
  [[ "$t" == direct ]] && continue
  p="$(work_pid "$t")"
  [[ -n "$p" ]] || continue
  IDLE_RSS[$t]="$(status_kb "$p" VmRSS)"
  NTHREADS[$t]="$(ls "/proc/$p/task" 2>/dev/null | wc -l)"
  log "idle $t (pid $p): VmRSS ${IDLE_RSS[$t]:-?} kB, ${NTHREADS[$t]} threads"
done

# Every load run is bounded: wrk's own duration plus a margin, then killed.
# run_wrk CONNS DURATION URL OUT [WRK_TIMEOUT]
run_wrk() {
  local conns=$1 dur=$2 url=$3 out=$4 wto=${5:-$WRK_TIMEOUT} limit
  limit=$(($(dur_secs "$dur") + 30))
  # In the background + wait, so a signal to this script is handled at once
  # (cleanup ends the load run too) instead of after the run.
  timeout -k 5 "$limit" wrk -t"$THREADS" -c"$conns" -d"$dur" --timeout "$wto" --latency "$url" >"$out" 2>&1 &
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
    # Loaded RSS: the peak (VmHWM) once the largest connection count has run
    # (its warm-up ran at that count too).
    if ((c == max_conns)) && [[ "$t" != direct ]]; then
      p="$(work_pid "$t")"
      if [[ -n "$p" ]]; then LOADED_RSS[$t]="$(status_kb "$p" VmHWM)"; fi
    fi
  done
done

# wrk_requests FILE: requests wrk completed ("N requests in ..."), empty if none
wrk_requests() { awk '/requests in/ { print $1; exit }' "$1" 2>/dev/null || true; }

# ----------------------------------------------------------- syscalls

# strace -c -f on the process serving the requests (all its threads) while
# wrk sends a fixed-duration load; the syscalls counted divided by the
# requests wrk completed. strace slows every syscall down, so the proxy is
# slower than in the measured runs; the count per request is the figure.
declare -A SYSC=() SYSC_TOP=() SYSC_REQS=()
if [[ "$STRACE" == 1 ]]; then
  for t in "${ACTIVE[@]}"; do
    [[ "$t" == direct ]] && continue
    p="$(work_pid "$t")"
    [[ -n "$p" ]] || continue
    out="$TMP/strace-$t.txt"
    log "strace $t (pid $p): ${STRACE_CONNECTIONS} connections, ${STRACE_DURATION}"
    strace -c -f -qq -o "$out" -p "$p" 2>"$TMP/strace-$t.err" &
    spid=$!
    PIDS+=("$spid")
    # Let strace attach to every thread first.
    sleep 1
    run_wrk "$STRACE_CONNECTIONS" "$STRACE_DURATION" "${URL[$t]}" "$TMP/wrk-strace-$t.txt" || warn "wrk under strace failed for $t"
    kill -INT "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    requests="$(wrk_requests "$TMP/wrk-strace-$t.txt")"
    # "% time  seconds  usecs/call  calls  [errors]  syscall": calls is the 4th field.
    calls="$(awk '$NF == "total" { print $4 }' "$out" 2>/dev/null || true)"
    if [[ -z "$calls" || -z "$requests" || "$requests" == 0 ]]; then
      warn "no syscall count for $t (requests=${requests:-?} syscalls=${calls:-?})"
      dump_log "$TMP/strace-$t.err"
      continue
    fi
    SYSC_REQS[$t]=$requests
    SYSC[$t]="$(awk -v a="$calls" -v n="$requests" 'BEGIN { printf "%.2f", a / n }')"
    SYSC_TOP[$t]="$(awk -v n="$requests" '$1 ~ /^[0-9.]+$/ && $NF != "total" && NF >= 5 { print $NF, $4 }' "$out" |
      sort -k2,2nr | head -n 6 | awk -v n="$requests" '{ printf "%s%s=%.2f", (NR > 1 ? " " : ""), $1, $2 / n }')"
  done
fi

# ----------------------------------------------------------- callgrind

# Each proxy started again, alone, under valgrind --tool=callgrind with
# instrumentation off (nginx as one process: master_process off). After an
# unmeasured warm-up, counters are zeroed and instrumentation switched on for a
# fixed wrk load, then off and dumped: the instructions (Ir, user space only)
# divided by the requests wrk completed. The same binary gives the same count
# whatever else the machine does. Requests in flight when wrk stops are
# counted by the proxy but not by wrk: at most CALLGRIND_CONNECTIONS out of
# the thousands completed.
declare -A INSTR=() INSTR_REQS=()
if [[ "$CALLGRIND" == 1 ]]; then
  for t in "${ACTIVE[@]}"; do
    [[ "$t" == direct ]] && continue
    dir="$TMP/callgrind-$t"
    read -r cport cadmin <<<"$(pick_ports 2)"
    target_cmd "$t" "$cport" "$cadmin" "$dir" 1
    start_bg "$t under callgrind" "$dir/$t.log" env "${T_ENV[@]}" \
      valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/callgrind.out" "${T_ARGV[@]}"
    cpid=$LAST_PID
    if ! wait_http "$T_READY" "$cpid" "$CALLGRIND_STARTUP_TIMEOUT" || ! check_ok "$T_URL"; then
      warn "$t did not become ready under callgrind within ${CALLGRIND_STARTUP_TIMEOUT}s"
      dump_log "$dir/error.log"
      dump_log "$dir/$t.log"
      stop_pid "$cpid"
      continue
    fi
    if ! is_zero_dur "$CALLGRIND_WARMUP"; then
      log "callgrind $t: warm-up ${CALLGRIND_WARMUP} at ${CALLGRIND_CONNECTIONS} connections"
      run_wrk "$CALLGRIND_CONNECTIONS" "$CALLGRIND_WARMUP" "$T_URL" "$dir/warmup.txt" 10s || true
    fi
    log "callgrind $t: counting ${CALLGRIND_DURATION} at ${CALLGRIND_CONNECTIONS} connections"
    cgc="$dir/callgrind_control.log"
    callgrind_control -z "$cpid" >>"$cgc" 2>&1 || true
    callgrind_control -i on "$cpid" >>"$cgc" 2>&1 || warn "callgrind_control -i on $cpid failed (see $cgc)"
    run_wrk "$CALLGRIND_CONNECTIONS" "$CALLGRIND_DURATION" "$T_URL" "$dir/wrk.txt" 10s || warn "wrk under callgrind failed for $t"
    callgrind_control -i off "$cpid" >>"$cgc" 2>&1 || warn "callgrind_control -i off $cpid failed (see $cgc)"
    callgrind_control -d "$cpid" >>"$cgc" 2>&1 || warn "callgrind_control -d $cpid failed (see $cgc)"
    stop_pid "$cpid"
    requests="$(wrk_requests "$dir/wrk.txt")"
    # The explicit dump and the one at exit (if any) hold disjoint counts.
    total="$(cat "$dir"/callgrind.out* 2>/dev/null | awk '/^totals:/ { s += $2; n++ } END { if (n) print s }')"
    if [[ -z "$total" || -z "$requests" || "$requests" == 0 ]]; then
      warn "no instruction count for $t (requests=${requests:-?} instructions=${total:-?})"
      dump_log "$dir/$t.log"
      continue
    fi
    INSTR_REQS[$t]=$requests
    INSTR[$t]="$(awk -v a="$total" -v n="$requests" 'BEGIN { printf "%.0f", a / n }')"
    log "callgrind $t: $total instructions / $requests requests = ${INSTR[$t]}"
  done
fi

for t in "${ACTIVE[@]}"; do
  [[ "$t" == direct ]] && continue
  p="$(work_pid "$t")"
  if [[ -n "$p" ]]; then END_RSS[$t]="$(status_kb "$p" VmRSS)"; fi
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

mb() { awk -v k="$1" 'BEGIN { if (k == "") print "-"; else printf "%.1f", k / 1024 }'; }
echo
cg_note="off, CALLGRIND=1 counts them"
if [[ "$CALLGRIND" == 1 ]]; then cg_note="callgrind, user space, ${CALLGRIND_CONNECTIONS} connections"; fi
st_note="off, STRACE=1 counts them"
if [[ "$STRACE" == 1 ]]; then st_note="strace -c -f, ${STRACE_CONNECTIONS} connections"; fi
echo "per proxy: req/s and cpu at ${max_conns} connections; instr/req (${cg_note});"
echo "sysc/req (${st_note}); RSS of the serving process (nginx: its worker):"
echo "idle = VmRSS after start and ${IDLE_REQUESTS} requests, loaded = VmHWM after the ${max_conns}-connection run, end = VmRSS at the end"
printf '%-8s %10s %10s %10s %10s %7s %9s %9s %9s\n' target 'req/s' 'cpu us/req' 'instr/req' 'sysc/req' threads 'idle MB' 'loaded MB' 'end MB'
printf '%-8s %10s %10s %10s %10s %7s %9s %9s %9s\n' -------- ---------- ---------- ---------- ---------- ------- --------- --------- ---------
for t in $TARGETS; do
  [[ "$t" == direct ]] && continue
  k="$t:$max_conns"
  instr="${INSTR[$t]:--}"
  if [[ "$CALLGRIND" != 1 ]]; then instr="(off)"; fi
  sysc="${SYSC[$t]:--}"
  if [[ "$STRACE" != 1 ]]; then sysc="(off)"; fi
  printf '%-8s %10s %10s %10s %10s %7s %9s %9s %9s\n' "$t" "${RPS[$k]:--}" "${CPU[$k]:--}" "$instr" "$sysc" "${NTHREADS[$t]:--}" \
    "$(mb "${IDLE_RSS[$t]:-}")" "$(mb "${LOADED_RSS[$t]:-}")" "$(mb "${END_RSS[$t]:-}")"
done
if [[ "$STRACE" == 1 ]]; then
  echo
  echo "most frequent syscalls per request (strace, ${STRACE_CONNECTIONS} connections)"
  for t in $TARGETS; do
    if [[ -n "${SYSC_TOP[$t]:-}" ]]; then printf '%-8s %s\n' "$t" "${SYSC_TOP[$t]}"; fi
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

for t in $TARGETS; do
  [[ "$t" == direct ]] && continue
  [[ " ${ACTIVE[*]} " == *" $t "* ]] || continue
  echo "RESOURCES target=$t idle_rss_kb=${IDLE_RSS[$t]:-na} loaded_rss_kb=${LOADED_RSS[$t]:-na} loaded_conns=$max_conns end_rss_kb=${END_RSS[$t]:-na} threads=${NTHREADS[$t]:-na} instructions_per_req=${INSTR[$t]:-na} callgrind_requests=${INSTR_REQS[$t]:-na} syscalls_per_req=${SYSC[$t]:-na} strace_requests=${SYSC_REQS[$t]:-na}"
  if [[ -n "${SYSC_TOP[$t]:-}" ]]; then
    echo "SYSCALLS target=$t conns=$STRACE_CONNECTIONS per_req=\"${SYSC_TOP[$t]}\""
  fi
done

if [[ " $TARGETS " == *" fusebox "* && -n "${SKIP[fusebox]:-}" ]]; then
  echo
  echo "NOTE: fusebox was skipped: ${SKIP[fusebox]}"
fi
