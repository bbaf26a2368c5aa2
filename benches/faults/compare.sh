#!/usr/bin/env bash
# Fault comparison: the same upstream faults through fusebox, nginx and
# HAProxy, each with its DEFAULT retry behaviour, and how many client
# requests succeed. Every scenario but keepalive-close has two endpoints,
# A (healthy) and B (faulty), balanced round robin by all three proxies;
# timeouts are the same everywhere: connect 1s, upstream response 2s.
#
#   bash benches/faults/compare.sh
#
# Scenarios:
#   refusing         B is a closed port (connection refused)
#   blackholed       B accepts TCP connections, reads, never answers
#   keepalive-close  one endpoint only, which answers 200 with Content-Length
#                    and no "Connection: close", then closes the socket (the
#                    keep-alive race: a proxy that reuses the connection loses
#                    the next request)
#   errors-500       B answers every request with 500
#   cut-body         B answers 200 announcing 1000 bytes, sends 500, then
#                    resets the connection (a replica failing mid-body)
#   dead-then-alive  B refuses connections for the first half of the run
#                    (half the requests answered, or MAX_SECONDS/2 passed),
#                    then starts answering 200; the client pauses DEAD_PAUSE
#                    seconds (default 11: past nginx's fail_timeout of 10s,
#                    within fusebox's 30s ejection) before the second half.
#                    Whether a proxy goes back to B shows in the "reached B"
#                    table; the pause is part of the wall time.
#   partition        a real network partition: A and B both live in a network
#                    namespace behind a veth pair; under steady load (a GET
#                    every PARTITION_INTERVAL s on one connection) the
#                    namespace's end of the link goes down for
#                    PARTITION_SECONDS (a true blackhole: the host keeps a
#                    static neighbour entry, so packets leave and vanish),
#                    then comes back. Reported: requests served, and the time
#                    from the heal to the first successful response. Needs
#                    root with CAP_NET_ADMIN and iproute2 (skipped otherwise);
#                    the namespace and link are removed afterwards.
#
# Environment (all optional):
#   REQUESTS=200          GETs per scenario and proxy
#   SCENARIOS="refusing blackholed keepalive-close errors-500 cut-body dead-then-alive partition"
#   PROXIES="fusebox nginx haproxy"
#   CONCURRENCY="1"       client threads (each on its own keep-alive
#                         connection); a list such as "1 4" adds rows
#   MAX_SECONDS=30        the client stops sending after this long (plus
#                         DEAD_PAUSE in dead-then-alive); what it did not send
#                         is reported as "unsent"
#   DEAD_PAUSE=11         see dead-then-alive
#   PARTITION_SECONDS=10  see partition (healthy 5 s before, 15 s after)
#   PARTITION_INTERVAL=0.05
#   STARTUP_TIMEOUT=10    seconds each server gets to start listening
#   FUSEBOX_BIN=target/release/fusebox   binary under test (relative to the
#                         repo root); built with cargo build --release when it
#                         is the default path and missing
#   FUSEBOX_LOG=warn      RUST_LOG for fusebox
#   FUSEBOX_RETRY_ON=     a non-default retry.on for fusebox, e.g.
#                         "connect-failure" (the old default: a timed-out or
#                         reset GET is not tried on the other endpoint); empty
#                         = the default [connect-failure, reset-before-response,
#                         504], nginx's "proxy_next_upstream error timeout"
#   KEEP_TMP=1            keep the temp dir (configs, logs, client output)
#
# Output: progress on stderr; the Markdown tables on stdout, also written to
# target/faults-table.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

REQUESTS="${REQUESTS:-200}"
SCENARIOS="${SCENARIOS:-refusing blackholed keepalive-close errors-500 cut-body dead-then-alive partition}"
SCENARIOS="${SCENARIOS//,/ }"
PROXIES="${PROXIES:-fusebox nginx haproxy}"
PROXIES="${PROXIES//,/ }"
CONCURRENCY="${CONCURRENCY:-1}"
CONCURRENCY="${CONCURRENCY//,/ }"
MAX_SECONDS="${MAX_SECONDS:-30}"
DEAD_PAUSE="${DEAD_PAUSE:-11}"
PARTITION_SECONDS="${PARTITION_SECONDS:-10}"
PARTITION_INTERVAL="${PARTITION_INTERVAL:-0.05}"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-10}"
FUSEBOX_BIN="${FUSEBOX_BIN:-target/release/fusebox}"
FUSEBOX_LOG="${FUSEBOX_LOG:-warn}"
KEEP_TMP="${KEEP_TMP:-0}"

# Same timeouts for every proxy.
CONNECT_TIMEOUT_S=1
READ_TIMEOUT_S=2

ALL_SCENARIOS="refusing blackholed keepalive-close errors-500 cut-body dead-then-alive partition"
ALL_PROXIES="fusebox nginx haproxy"

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------- processes

PIDS=()
TMP=""
CLIENT_PID=""

stop_pid() {
  local pid=$1 children i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    # nginx workers are children of the master: end them too.
    children="$(pgrep -P "$pid" 2>/dev/null || true)"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $children; do
      kill -KILL "$i" 2>/dev/null || true
    done
  fi
  wait "$pid" 2>/dev/null || true
}

# stop_all: stop every process started so far (between runs and on exit)
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do
    stop_pid "$pid"
  done
  PIDS=()
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$CLIENT_PID" ]]; then
    stop_pid "$CLIENT_PID"
  fi
  stop_all
  lab_down
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

ensure_tools() {
  # command -> Debian package
  local -A pkg=([nginx]=nginx [haproxy]=haproxy [python3]=python3)
  local need=() cmd
  have python3 || need+=(python3)
  for cmd in nginx haproxy; do
    if [[ " $PROXIES " == *" $cmd "* ]]; then
      have "$cmd" || need+=("${pkg[$cmd]}")
    fi
  done
  if ((${#need[@]} == 0)); then return 0; fi
  if [[ "$(id -u)" -eq 0 ]] && have apt-get; then
    log "apt-get update"
    apt-get update -qq >&2
    log "installing: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
    for cmd in python3 nginx haproxy; do
      if [[ " ${need[*]} " == *" ${pkg[$cmd]} "* ]] && ! have "$cmd"; then
        die "$cmd is still not on PATH after apt-get install ${pkg[$cmd]}"
      fi
    done
  else
    die "missing: ${need[*]} (install them, e.g. apt-get install -y ${need[*]})"
  fi
}

# N free TCP ports on 127.0.0.1
pick_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# wait_port PORT PID TIMEOUT_S: 0 once 127.0.0.1:PORT accepts a TCP
# connection, 1 on timeout or if PID died. Only a TCP connect, never a
# request: a request would already go to the faulty endpoint and change the
# proxy's state before the measured run.
wait_port() {
  local port=$1 pid=$2 timeout=$3 deadline
  deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    if (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# wait_http URL PID TIMEOUT_S: 0 once URL answers 2xx (python3: curl is not required)
wait_http() {
  local url=$1 pid=$2 timeout=$3 deadline
  deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$url" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# start_bg NAME LOGFILE CMD...: start CMD in the background, pid in LAST_PID
LAST_PID=""
start_bg() {
  local name=$1 logf=$2
  shift 2
  "$@" >"$logf" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  log "started $name (pid $LAST_PID)"
}

dump_log() {
  local f=$1
  if [[ -s "$f" ]]; then
    printf -- '--- last lines of %s ---\n' "$f" >&2
    tail -n 20 "$f" >&2
    printf -- '---\n' >&2
  fi
}

# ------------------------------------------------------------- the proxies

# Each writer takes: DIR PORT ADMIN_PORT ENDPOINT...; an endpoint is a port
# on 127.0.0.1 or HOST:PORT (the partition scenario's namespace).
ep() { [[ "$1" == *:* ]] && echo "$1" || echo "127.0.0.1:$1"; }

write_fusebox() {
  local dir=$1 port=$2 admin=$3 eps="" p
  shift 3
  for p in "$@"; do
    eps+="${eps:+, }http://$(ep "$p")"
  done
  # Defaults for everything else (retry, outlierDetection, breaker): the
  # comparison is of defaults, unless FUSEBOX_RETRY_ON asks for a row with
  # another retry.on.
  local retry=""
  if [[ -n "${FUSEBOX_RETRY_ON:-}" ]]; then
    retry=$'\n'"    retry: { on: [${FUSEBOX_RETRY_ON}] }"
  fi
  cat >"$dir/fusebox.yaml" <<EOF
listen: 127.0.0.1:$port
admin: { listen: 127.0.0.1:$admin }
auth: none
upstreams:
  app:
    endpoints: [$eps]
    timeouts: { connect: ${CONNECT_TIMEOUT_S}s, request: ${READ_TIMEOUT_S}s }${retry}
routes:
  - { match: { pathPrefix: / }, upstream: app }
EOF
}

write_nginx() {
  local dir=$1 port=$2 servers="" p
  shift 3
  for p in "$@"; do
    servers+="        server $(ep "$p");"$'\n'
  done
  mkdir -p "$dir/logs"
  # worker_processes and master_process come from -g.
  # Default proxy_next_upstream (error timeout), default max_fails=1
  # fail_timeout=10s.
  cat >"$dir/nginx.conf" <<EOF
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 1024;
}
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream app {
$servers        keepalive 32;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout ${CONNECT_TIMEOUT_S}s;
            proxy_read_timeout ${READ_TIMEOUT_S}s;
        }
    }
}
EOF
}

write_haproxy() {
  local dir=$1 port=$2 servers="" p i=0
  shift 3
  for p in "$@"; do
    i=$((i + 1))
    servers+="    server s$i $(ep "$p")"$'\n'
  done
  # Defaults: retries 3 (to the same server), no "option redispatch", no
  # health checks (no "check" on the server lines).
  cat >"$dir/haproxy.cfg" <<EOF
global
    maxconn 1024

defaults
    mode http
    timeout connect ${CONNECT_TIMEOUT_S}s
    timeout server ${READ_TIMEOUT_S}s
    timeout client 30s
    http-reuse safe

frontend fe
    bind 127.0.0.1:$port
    default_backend app

backend app
    balance roundrobin
$servers
EOF
}

FUSEBOX_SKIP=""
resolve_fusebox() {
  FUSEBOX_ABS="$FUSEBOX_BIN"
  [[ "$FUSEBOX_ABS" == /* ]] || FUSEBOX_ABS="$REPO_ROOT/$FUSEBOX_ABS"
  if [[ ! -x "$FUSEBOX_ABS" && "$FUSEBOX_ABS" == "$REPO_ROOT/target/release/fusebox" ]]; then
    if have cargo; then
      log "$FUSEBOX_ABS missing: cargo build --release"
      if ! (cd "$REPO_ROOT" && cargo build --release) >&2; then
        warn "cargo build --release failed"
      fi
    else
      warn "cargo not found, cannot build $FUSEBOX_ABS"
    fi
  fi
  if [[ ! -x "$FUSEBOX_ABS" ]]; then
    FUSEBOX_SKIP="binary $FUSEBOX_ABS not found"
  fi
}

# start_proxy PROXY DIR PORT ADMIN_PORT ENDPOINT_PORT...: 0 once it listens
start_proxy() {
  local proxy=$1 dir=$2 port=$3 admin=$4
  shift # the writers take DIR PORT ADMIN_PORT ENDPOINT_PORT...
  mkdir -p "$dir"
  case "$proxy" in
    fusebox)
      write_fusebox "$@"
      if ! "$FUSEBOX_ABS" check -c "$dir/fusebox.yaml" >"$dir/check.log" 2>&1; then
        dump_log "$dir/check.log"
        warn "fusebox check rejected $dir/fusebox.yaml"
        return 1
      fi
      start_bg fusebox "$dir/fusebox.log" env RUST_LOG="$FUSEBOX_LOG" "$FUSEBOX_ABS" run -c "$dir/fusebox.yaml"
      # The admin listener's /readyz, not the data path: no request may reach
      # the upstream before the measured run.
      if ! wait_http "http://127.0.0.1:$admin/readyz" "$LAST_PID" "$STARTUP_TIMEOUT" ||
        ! wait_port "$port" "$LAST_PID" "$STARTUP_TIMEOUT"; then
        dump_log "$dir/fusebox.log"
        return 1
      fi
      ;;
    nginx)
      write_nginx "$@"
      start_bg nginx "$dir/stdout.log" nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" \
        -g 'daemon off; master_process on; worker_processes 1;'
      if ! wait_port "$port" "$LAST_PID" "$STARTUP_TIMEOUT"; then
        dump_log "$dir/error.log"
        dump_log "$dir/stdout.log"
        return 1
      fi
      ;;
    haproxy)
      write_haproxy "$@"
      # -db: foreground, so the pid we hold is HAProxy itself.
      start_bg haproxy "$dir/haproxy.log" haproxy -db -f "$dir/haproxy.cfg"
      if ! wait_port "$port" "$LAST_PID" "$STARTUP_TIMEOUT"; then
        dump_log "$dir/haproxy.log"
        return 1
      fi
      ;;
  esac
}

# ------------------------------------------------ the partition's network lab

LAB_NS=""
LAB_HOST_IF=""
LAB_NS_IF=""

lab_down() {
  if [[ -n "$LAB_HOST_IF" ]]; then ip link del "$LAB_HOST_IF" 2>/dev/null || true; fi
  if [[ -n "$LAB_NS" ]]; then ip netns del "$LAB_NS" 2>/dev/null || true; fi
  LAB_NS=""
  LAB_HOST_IF=""
  LAB_NS_IF=""
}

# lab_up HOST_ADDR NS_ADDR: a network namespace behind a veth pair (a /30),
# with a static neighbour entry on the host side, so that with the
# namespace's end down packets leave and vanish (no ARP failure, no
# "unreachable"): a true blackhole.
lab_up() {
  local host_addr=$1 ns_addr=$2 mac
  LAB_NS="fbf$$"
  LAB_HOST_IF="fbfh$$"
  LAB_NS_IF="fbfn$$"
  ip netns add "$LAB_NS" || return 1
  ip link add "$LAB_HOST_IF" type veth peer name "$LAB_NS_IF" || return 1
  ip link set "$LAB_NS_IF" netns "$LAB_NS" || return 1
  ip addr add "$host_addr/30" dev "$LAB_HOST_IF" || return 1
  ip link set "$LAB_HOST_IF" up || return 1
  ip netns exec "$LAB_NS" ip addr add "$ns_addr/30" dev "$LAB_NS_IF" || return 1
  ip netns exec "$LAB_NS" ip link set "$LAB_NS_IF" up || return 1
  ip netns exec "$LAB_NS" ip link set lo up || return 1
  mac="$(ip netns exec "$LAB_NS" cat "/sys/class/net/$LAB_NS_IF/address")" || return 1
  ip neigh replace "$ns_addr" lladdr "$mac" dev "$LAB_HOST_IF" nud permanent
}

declare -A HEAL=() # "partition/conc/proxy" -> "first success after the heal; failures after it"

# run_partition CONC PROXY DIR KEY PORT ADMIN
run_partition() {
  local conc=$1 proxy=$2 dir=$3 key=$4 port=$5 admin=$6 a b p octet host_addr ns_addr deadline rc=0
  RES[$key]=""
  if [[ "$(id -u)" != 0 ]] || ! have ip; then
    warn "partition needs root (CAP_NET_ADMIN) and iproute2: skipped"
    return 0
  fi
  octet=$((16 + $$ % 200))
  host_addr="10.253.$octet.1"
  ns_addr="10.253.$octet.2"
  if ! lab_up "$host_addr" "$ns_addr"; then
    warn "cannot set up the namespace lab: partition skipped"
    lab_down
    return 0
  fi
  read -r a b <<<"$(pick_ports 2)"
  for p in $a $b; do
    start_bg "upstream $ns_addr:$p (ok)" "$dir/u$p.log" ip netns exec "$LAB_NS" python3 "$SCRIPT_DIR/upstream.py" ok --host "$ns_addr" --port "$p"
  done
  for p in $a $b; do
    deadline=$((SECONDS + STARTUP_TIMEOUT))
    until (: <"/dev/tcp/$ns_addr/$p") 2>/dev/null; do
      if ((SECONDS >= deadline)); then
        warn "the upstreams in the namespace did not start"
        stop_all
        lab_down
        return 0
      fi
      sleep 0.05
    done
  done
  if ! start_proxy "$proxy" "$dir" "$port" "$admin" "$ns_addr:$a" "$ns_addr:$b"; then
    warn "$proxy did not start for partition"
    stop_all
    lab_down
    return 0
  fi
  log "partition: $proxy, a GET every ${PARTITION_INTERVAL}s; link down at 5 s for ${PARTITION_SECONDS} s"
  python3 "$SCRIPT_DIR/client.py" --url "http://127.0.0.1:$port/" --requests 1000000 --threads "$conc" \
    --deadline $((5 + PARTITION_SECONDS + 15)) --timeout 5 --interval "$PARTITION_INTERVAL" --trace "$dir/trace" \
    >"$dir/client.json" 2>"$dir/client.err" &
  CLIENT_PID=$!
  sleep 5
  ip netns exec "$LAB_NS" ip link set "$LAB_NS_IF" down
  sleep "$PARTITION_SECONDS"
  ip netns exec "$LAB_NS" ip link set "$LAB_NS_IF" up
  date +%s.%N >"$dir/heal"
  wait "$CLIENT_PID" || rc=$?
  CLIENT_PID=""
  if ((rc != 0)) || [[ ! -s "$dir/client.json" ]]; then
    dump_log "$dir/client.err"
    warn "client failed for partition/$proxy"
  else
    RES[$key]="$(cat "$dir/client.json")"
    HEAL[$key]="$(python3 - "$dir/trace" "$dir/heal" <<'PY'
import sys
heal = float(open(sys.argv[2]).read())
first, failed = None, 0
for line in open(sys.argv[1]):
    t, ok = line.split()
    t = float(t)
    if t < heal:
        continue
    if ok == "1" and first is None:
        first = t - heal
    if ok == "0":
        failed += 1
print("%s; %d failed" % ("%.2f s" % first if first is not None else "never", failed))
PY
)"
    log "  $(cat "$dir/client.json"); after the heal: ${HEAL[$key]}"
  fi
  stop_all
  lab_down
}

# ---------------------------------------------------------------- checks

for s in $SCENARIOS; do
  [[ " $ALL_SCENARIOS " == *" $s "* ]] || die "unknown scenario '$s' (known: $ALL_SCENARIOS)"
done
for p in $PROXIES; do
  [[ " $ALL_PROXIES " == *" $p "* ]] || die "unknown proxy '$p' (known: $ALL_PROXIES)"
done
for c in $CONCURRENCY; do
  [[ "$c" =~ ^[1-9][0-9]*$ ]] || die "bad CONCURRENCY '$c'"
done
[[ -n "${SCENARIOS// /}" ]] || die "SCENARIOS is empty"
[[ -n "${PROXIES// /}" ]] || die "PROXIES is empty"
[[ "$REQUESTS" =~ ^[1-9][0-9]*$ ]] || die "bad REQUESTS '$REQUESTS'"
[[ "$MAX_SECONDS" =~ ^[1-9][0-9]*$ ]] || die "bad MAX_SECONDS '$MAX_SECONDS'"
[[ "$DEAD_PAUSE" =~ ^[0-9]+$ ]] || die "bad DEAD_PAUSE '$DEAD_PAUSE'"
[[ "$STARTUP_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "bad STARTUP_TIMEOUT '$STARTUP_TIMEOUT'"

ensure_tools
if [[ " $PROXIES " == *" fusebox "* ]]; then
  resolve_fusebox
  [[ -z "$FUSEBOX_SKIP" ]] || warn "fusebox will be skipped: $FUSEBOX_SKIP"
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/fusebox-faults.XXXXXX")"
# nginx workers run as "nobody" when started by root: let them see their prefix.
chmod 755 "$TMP"
log "temp dir $TMP"

# ----------------------------------------------------------------- the run

declare -A RES=()  # "scenario/conc/proxy" -> client JSON
declare -A HITS=() # "scenario/conc/proxy" -> "requests=N connections=M" of the faulty server
ROWS=()

# run_one SCENARIO CONC PROXY: fresh upstreams and a fresh proxy, one client run
run_one() {
  local sc=$1 conc=$2 proxy=$3 key="$1/$2/$3" dir a b port admin
  dir="$TMP/$sc-c$conc-$proxy"
  mkdir -p "$dir"
  read -r a b port admin <<<"$(pick_ports 4)"
  local eps=("$a" "$b") faulty_stats="$dir/b.stats" client_extra=()
  if [[ "$sc" == partition ]]; then
    run_partition "$conc" "$proxy" "$dir" "$key" "$port" "$admin"
    return 0
  fi

  # A: healthy, except in keepalive-close where it is the only (faulty) endpoint.
  case "$sc" in
    keepalive-close)
      eps=("$a")
      faulty_stats="$dir/a.stats"
      start_bg "upstream A (close)" "$dir/a.log" python3 "$SCRIPT_DIR/upstream.py" close --port "$a" --stats "$dir/a.stats"
      ;;
    *)
      start_bg "upstream A (ok)" "$dir/a.log" python3 "$SCRIPT_DIR/upstream.py" ok --port "$a" --stats "$dir/a.stats"
      ;;
  esac
  wait_port "$a" "$LAST_PID" "$STARTUP_TIMEOUT" || {
    dump_log "$dir/a.log"
    die "upstream A did not start"
  }
  # B: the faulty endpoint.
  case "$sc" in
    refusing) faulty_stats="" ;; # nothing listens on $b
    blackholed | errors-500 | cut-body)
      local mode=blackhole
      [[ "$sc" == errors-500 ]] && mode=error500
      [[ "$sc" == cut-body ]] && mode=cutbody
      start_bg "upstream B ($mode)" "$dir/b.log" python3 "$SCRIPT_DIR/upstream.py" "$mode" --port "$b" --stats "$dir/b.stats"
      wait_port "$b" "$LAST_PID" "$STARTUP_TIMEOUT" || {
        dump_log "$dir/b.log"
        die "upstream B did not start"
      }
      ;;
    dead-then-alive)
      # Refuses until the client has had half its answers, then serves 200.
      start_bg "upstream B (dead, then ok)" "$dir/b.log" python3 "$SCRIPT_DIR/upstream.py" ok --port "$b" \
        --stats "$dir/b.stats" --start-when "$dir/b.start"
      client_extra=(--trigger-after $(((REQUESTS + 1) / 2)) --trigger-after-seconds $((MAX_SECONDS / 2))
        --trigger-file "$dir/b.start" --trigger-wait-port "$b"
        --trigger-pause "$DEAD_PAUSE")
      ;;
  esac

  if ! start_proxy "$proxy" "$dir" "$port" "$admin" "${eps[@]}"; then
    warn "$proxy did not start for $sc"
    RES[$key]=""
    stop_all
    return 0
  fi

  log "$sc: $proxy, $REQUESTS GETs, $conc connection(s)"
  python3 "$SCRIPT_DIR/client.py" --url "http://127.0.0.1:$port/" --requests "$REQUESTS" --threads "$conc" \
    --deadline "$MAX_SECONDS" "${client_extra[@]}" >"$dir/client.json" 2>"$dir/client.err" &
  CLIENT_PID=$!
  local rc=0
  wait "$CLIENT_PID" || rc=$?
  CLIENT_PID=""
  if ((rc != 0)) || [[ ! -s "$dir/client.json" ]]; then
    dump_log "$dir/client.err"
    warn "client failed for $sc/$proxy"
    RES[$key]=""
  else
    RES[$key]="$(cat "$dir/client.json")"
    log "  $(cat "$dir/client.json")"
  fi
  if [[ -n "$faulty_stats" && -s "$faulty_stats" ]]; then
    HITS[$key]="$(cat "$faulty_stats")"
  fi
  stop_all
}

for sc in $SCENARIOS; do
  for conc in $CONCURRENCY; do
    ROWS+=("$sc/$conc")
    for proxy in $PROXIES; do
      if [[ "$proxy" == fusebox && -n "$FUSEBOX_SKIP" ]]; then
        continue
      fi
      run_one "$sc" "$conc" "$proxy"
    done
  done
done

# ----------------------------------------------------------------- report

# field JSON NAME: ok | other | wall | unsent from a client JSON
field() {
  python3 - "$1" "$2" <<'PY'
import json, sys
raw, name = sys.argv[1], sys.argv[2]
if not raw:
    print("-")
    sys.exit()
d = json.loads(raw)
if name == "ok":
    print(d["ok"])
elif name == "sent":
    print(d.get("sent", "-"))
elif name == "wall":
    print("%.1f" % d["wall_s"])
elif name == "other":
    parts = ["%s×%d" % (k, v) for k, v in d["statuses"].items()]
    parts += ["%s×%d" % (k, v) for k, v in d["errors"].items()]
    if d["unsent"]:
        parts.append("unsent×%d" % d["unsent"])
    print(", ".join(parts) if parts else "none")
PY
}

label() {
  local sc=$1 conc=$2
  if [[ "$CONCURRENCY" == 1 ]]; then
    echo "$sc"
  else
    echo "$sc ($conc conn)"
  fi
}

cell() {
  local key=$1 what=$2
  if [[ "${key##*/}" == fusebox && -n "$FUSEBOX_SKIP" ]] || [[ " $PROXIES " != *" ${key##*/} "* ]]; then
    echo "skipped"
  elif [[ "$what" == ok ]]; then
    local v
    v="$(field "${RES[$key]:-}" ok)"
    local n=$REQUESTS
    # The partition's client sends for a fixed time, not a fixed count.
    [[ "$key" == partition/* ]] && n="$(field "${RES[$key]:-}" sent)"
    [[ "$v" == - ]] && echo "failed to start" || echo "$v/$n"
  else
    field "${RES[$key]:-}" "$what"
  fi
}

fb_desc="not run"
if [[ -z "$FUSEBOX_SKIP" && " $PROXIES " == *" fusebox "* ]]; then
  # The commit of the checkout the binary sits in (a FUSEBOX_BIN from a
  # worktree names that worktree's commit), and whether its sources differ.
  fb_dir="$(dirname "$FUSEBOX_ABS")"
  fb_commit="$(git -C "$fb_dir" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [[ -n "$(git -C "$fb_dir" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null || true)" ]]; then
    fb_commit+=" + uncommitted changes in src"
  fi
  fb_desc="$FUSEBOX_ABS, built from commit $fb_commit"
fi
nginx_version="$(nginx -v 2>&1 | sed 's|.*nginx/||' || true)"
haproxy_version="$(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }' || true)"

OUT="$TMP/table.md"
{
  echo "fusebox fault comparison, $(date -u +%Y-%m-%dT%H:%M:%SZ), fusebox: $fb_desc; nginx ${nginx_version:-?}, HAProxy ${haproxy_version:-?}"
  echo
  echo "$REQUESTS sequential GETs per client connection set; defaults for retries everywhere; connect timeout ${CONNECT_TIMEOUT_S}s, upstream response timeout ${READ_TIMEOUT_S}s; client stops sending after ${MAX_SECONDS}s (unsent)."
  echo
  echo "| scenario | fusebox ok/N | nginx ok/N | HAProxy ok/N | fusebox other statuses | nginx other | HAProxy other | fusebox wall s | nginx wall s | HAProxy wall s |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for row in "${ROWS[@]}"; do
    sc="${row%/*}"
    conc="${row#*/}"
    line="| $(label "$sc" "$conc")"
    for what in ok other wall; do
      for proxy in fusebox nginx haproxy; do
        line+=" | $(cell "$row/$proxy" "$what")"
      done
    done
    echo "$line |"
  done
  echo
  if [[ " $SCENARIOS " == *" partition "* ]]; then
    echo "Partition of both endpoints for ${PARTITION_SECONDS} s (a GET every ${PARTITION_INTERVAL} s): time from the heal to the first successful response; requests that failed after the heal:"
    echo
    echo "| scenario | fusebox | nginx | HAProxy |"
    echo "|---|---|---|---|"
    for row in "${ROWS[@]}"; do
      [[ "${row%/*}" == partition ]] || continue
      line="| $(label partition "${row#*/}")"
      for proxy in fusebox nginx haproxy; do
        line+=" | ${HEAL[$row/$proxy]:--}"
      done
      echo "$line |"
    done
    echo
  fi
  echo "Requests that reached the faulty endpoint (B; keepalive-close: the single endpoint), as requests seen / TCP connections accepted:"
  echo
  echo "| scenario | fusebox | nginx | HAProxy |"
  echo "|---|---|---|---|"
  for row in "${ROWS[@]}"; do
    sc="${row%/*}"
    conc="${row#*/}"
    line="| $(label "$sc" "$conc")"
    for proxy in fusebox nginx haproxy; do
      h="${HITS[$row/$proxy]:-}"
      if [[ -z "$h" ]]; then
        [[ "$sc" == refusing ]] && h="(closed port)" || h="-"
      else
        h="$(sed -E 's/requests=([0-9]+) connections=([0-9]+)/\1 \/ \2/' <<<"$h")"
      fi
      line+=" | $h"
    done
    echo "$line |"
  done
} >"$OUT"

mkdir -p "$REPO_ROOT/target"
cp "$OUT" "$REPO_ROOT/target/faults-table.md"
echo
cat "$OUT"
echo
log "table saved to target/faults-table.md"
if [[ " $PROXIES " == *" fusebox "* && -n "$FUSEBOX_SKIP" ]]; then
  echo "NOTE: fusebox was skipped: $FUSEBOX_SKIP"
fi
