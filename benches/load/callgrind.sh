#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: the noise-free
# figure (the same binary gives the same count whatever else the machine
# does). Each fusebox binary given runs under valgrind with instrumentation off
# until the load starts; wrk then sends a fixed load through it, collection
# stops, and the instructions executed during the load are divided by the
# requests wrk completed.
#
#   bash benches/load/callgrind.sh BIN [BIN ...]
#
# Environment (all optional):
#   CONNECTIONS=32    wrk -c
#   DURATION=10s      wrk -d (valgrind runs fusebox ~50x slower: the request
#                     count is what matters, not the time)
#
# Output: one "CALLGRIND <bin> <instructions/request> <requests>" line per
# binary on stdout; needs valgrind (callgrind_control), wrk and nginx (the
# tiny upstream of compare.sh).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "$0")" && pwd)"
CONNECTIONS="${CONNECTIONS:-32}"
DURATION="${DURATION:-10s}"
TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n "${KEEP_TMP:-}" ]] && echo "kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ok() {
  local url=$1 tries=${2:-300}
  for _ in $(seq "$tries"); do
    if curl -s -o /dev/null --max-time 2 "$url"; then return 0; fi
    sleep 0.2
  done
  echo "no answer from $url" >&2
  return 1
}

UPSTREAM_PORT="$(free_port)"
mkdir -p "$TMP/upstream"
sed -e "s|@PREFIX@|$TMP/upstream|g" -e "s|@PROXY_PORT@|$UPSTREAM_PORT|g" -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" -e "s|@WORKERS@|1|g" \
  "$SCRIPT_DIR/upstream.nginx.conf.in" >"$TMP/upstream/nginx.conf"
nginx -p "$TMP/upstream/" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_ok "http://127.0.0.1:$UPSTREAM_PORT/"

for bin in "$@"; do
  port="$(free_port)"
  admin="$(free_port)"
  dir="$TMP/$(basename "$(dirname "$bin")")-$port"
  mkdir -p "$dir"
  sed -e "s|@PROXY_PORT@|$port|g" -e "s|@ADMIN_PORT@|$admin|g" -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" -e "s|@WORKERS@|1|g" \
    "$SCRIPT_DIR/fusebox.yaml.in" >"$dir/fusebox.yaml"
  RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/callgrind.out" \
    "$bin" run -c "$dir/fusebox.yaml" >"$dir/log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_ok "http://127.0.0.1:$admin/readyz"
  # Warm the pool and the allocator outside the count.
  wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  out="$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$port/")"
  callgrind_control -i off "$pid" >/dev/null
  requests="$(awk '/requests in/ {print $1}' <<<"$out")"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  total="$(awk '/^totals:/ {print $2; exit}' "$dir"/callgrind.out*)"
  if [[ -z "$total" || -z "$requests" || "$requests" == 0 ]]; then
    echo "CALLGRIND $bin failed (requests=$requests instructions=$total)"
    continue
  fi
  echo "CALLGRIND $bin $((total / requests)) $requests"
done
