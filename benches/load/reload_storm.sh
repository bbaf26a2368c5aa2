#!/usr/bin/env bash
# Requests/s through fusebox during a reload storm, as a ratio to requests/s
# without reloads, from one run. The config has 100 upstreams; the storm
# rewrites the file (alternating two valid versions, so every reload really
# changes something) and sends SIGHUP in a loop for the whole load run (the
# admin reload endpoint is rate limited per caller, so it cannot storm). Needs wrk, curl, python3 and an nginx upstream (the
# script starts one). Usage: bash benches/load/reload_storm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${DURATION:-5s}"
CONNS="${CONNS:-32}"
BIN="${FUSEBOX_BIN:-target/release/fusebox}"
[[ -x "$BIN" ]] || cargo build --release
for t in wrk nginx curl; do command -v "$t" >/dev/null || { echo "needs $t (apt-get install -y wrk nginx curl)"; exit 2; }; done
tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [[ -f "$tmp/nginx.pid" ]] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); DATA=$(port); ADMIN=$(port)
mkdir -p "$tmp/logs"
cat > "$tmp/nginx.conf" <<NGX
worker_processes 1; error_log $tmp/logs/error.log; pid $tmp/nginx.pid;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } } }
NGX
nginx -c "$tmp/nginx.conf" -p "$tmp"
config() { # $1 = failureThreshold of the routed upstream
  { echo "listen: 127.0.0.1:$DATA"; echo "workers: 1"; echo "admin: { listen: 127.0.0.1:$ADMIN }"; echo "auth: none"; echo "shutdown: { drainDelay: 0s, gracePeriod: 1s }"; echo "upstreams:"
    for i in $(seq 0 99); do echo "  svc-$i: { endpoints: [http://127.0.0.1:$UP], breaker: { failureThreshold: $1 } }"; done
    echo "routes:"; for i in $(seq 0 99); do echo "  - { match: { pathPrefix: /svc-$i/ }, upstream: svc-$i }"; done
    echo "  - { match: { pathPrefix: / }, upstream: svc-0 }"; } > "$tmp/fusebox.yaml.new"
  mv "$tmp/fusebox.yaml.new" "$tmp/fusebox.yaml"
}
config 5
RUST_LOG=warn "$BIN" run -c "$tmp/fusebox.yaml" >/dev/null 2>&1 & fb=$!; pids+=($fb)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
rps() { awk '/Requests\/sec/{print $2}'; }
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$DATA/" >/dev/null
base=$(wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$DATA/svc-7/x" | rps)
stop="$tmp/stop"; count="$tmp/count"; echo 0 > "$count"
( n=0; while [[ ! -f "$stop" ]]; do config $(( n % 2 == 0 ? 6 : 5 )); kill -HUP "$fb"; sleep 0.02; n=$((n+1)); echo $n > "$count"; done ) & pids+=($!)
storm_out=$(wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$DATA/svc-7/x")
touch "$stop"; sleep 0.3
storm=$(echo "$storm_out" | rps)
non2xx=$(echo "$storm_out" | awk '/Non-2xx/{print $NF}'); non2xx=${non2xx:-0}
reloads=$(cat "$count")
gen=$(curl -s "http://127.0.0.1:$ADMIN/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')
echo "baseline req/s:      $base"
echo "during storm req/s:  $storm   (non-2xx: $non2xx)"
echo "reloads in storm:    $reloads (generation now $gen)"
python3 -c "print(f'RESULT reload_storm conns=$CONNS ratio={float(\"$storm\")/float(\"$base\"):.3f} reloads=$reloads non2xx=$non2xx')"
