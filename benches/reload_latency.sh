#!/usr/bin/env bash
# benches/reload_latency.sh — data-plane p99 latency without and with admin
# reloads of a ~1 MiB config (the config file limit), 3 at a time in a loop
# (`POST /api/admin/config/reload`), and their ratio (target: within 2x).
# Reloads are parsed and built on the blocking pool, one at a time and
# coalesced, so they must not stall requests.
#
# Needs wrk, nginx (the trivial upstream), curl and python3; builds the
# release binary if missing. Each reload request carries a token with its
# own subject: the admin API rate-limits mutations per caller.
# Usage: bash benches/reload_latency.sh   (DURATION=10s CONNS=16 WORKERS=2)
#
# Must not: leave processes or files behind (everything in a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-16}"
WORKERS="${WORKERS:-2}"
BIN="${FUSEBOX_BIN:-target/release/fusebox}"
[[ -x "$BIN" ]] || cargo build --release
for t in wrk nginx curl python3; do command -v "$t" >/dev/null || { echo "needs $t (apt-get install -y wrk nginx curl)"; exit 2; }; done
tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f "$tmp/nginx.pid" ]] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); DATA=$(port); ADMIN=$(port)
SECRET="reload-latency-bench-secret-0123456789abcdef"
mkdir -p "$tmp/logs"
printf '%s' "$SECRET" > "$tmp/jwt.secret"
cat > "$tmp/nginx.conf" <<NGX
worker_processes 1; error_log $tmp/logs/error.log; pid $tmp/nginx.pid;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } } }
NGX
nginx -c "$tmp/nginx.conf" -p "$tmp"

python3 - "$tmp/fusebox.yaml" "$DATA" "$ADMIN" "$UP" "$WORKERS" "$tmp/jwt.secret" <<'PY'
import sys
path, data, admin, up, workers, secret = sys.argv[1:]
head = (f"listen: 127.0.0.1:{data}\nworkers: {workers}\nadmin: {{ listen: 127.0.0.1:{admin} }}\n"
        f"auth: {{ jwt: {{ hs256SecretFile: {secret}, adminRole: admin }} }}\n"
        "shutdown: { drainDelay: 0s, gracePeriod: 1s }\nupstreams:\n")
ups, routes, i = [], [], 0
limit = 1000 * 1024
size = len(head) + 200
while size < limit:
    u = (f"  svc-{i:05}:\n    endpoints: [http://127.0.0.1:{up}]\n"
         f"    breaker: {{ failureThreshold: 5, resetTimeout: 30s, monitoringWindow: 60s }}\n"
         f"    timeouts: {{ connect: 1s, request: 10s }}\n")
    r = f"  - {{ match: {{ pathPrefix: /svc-{i:05}/ }}, upstream: svc-{i:05} }}\n"
    ups.append(u); routes.append(r); size += len(u) + len(r); i += 1
text = head + "".join(ups) + "routes:\n" + "".join(routes) + "  - { match: { pathPrefix: / }, upstream: svc-00000 }\n"
open(path, "w").write(text)
print(f"config: {len(text)} bytes, {i} upstreams, {i + 1} routes", file=sys.stderr)
PY
RUST_LOG=warn "$BIN" run -c "$tmp/fusebox.yaml" >"$tmp/fusebox.log" 2>&1 & fb=$!; pids+=($fb)
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null || { cat "$tmp/fusebox.log"; exit 1; }

# HS256 tokens with distinct subjects (stdlib only).
cat > "$tmp/token.py" <<'PY'
import base64, hmac, hashlib, json, sys, time
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
secret = open(sys.argv[1], "rb").read()
for n in range(int(sys.argv[2])):
    h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    c = b64(json.dumps({"sub": f"bench-{n}", "role": "admin", "exp": int(time.time()) + 3600}).encode())
    s = b64(hmac.new(secret, f"{h}.{c}".encode(), hashlib.sha256).digest())
    print(f"{h}.{c}.{s}")
PY
python3 "$tmp/token.py" "$tmp/jwt.secret" 3000 > "$tmp/tokens"

p99() { # wrk --latency output -> p99 in ms
  awk '$1=="99%"{v=$2; u=v; sub(/[0-9.]+/,"",u); sub(/[a-z]+$/,"",v); m=(u=="us")?0.001:(u=="s")?1000:(u=="m")?60000:1; printf "%.3f", v*m}'
}
URL="http://127.0.0.1:$DATA/svc-00007/x"
wrk -t1 -c"$CONNS" -d2s "$URL" >/dev/null
base_out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$URL")
base=$(echo "$base_out" | p99)

reloader() {
  local n=0 ok=0
  while true; do
    for k in 1 2 3; do
      tok=$(sed -n "$((n + 1))p" "$tmp/tokens"); n=$((n + 1))
      curl -s -o /dev/null -w '%{http_code}\n' -X POST -H "authorization: Bearer $tok" "http://127.0.0.1:$ADMIN/api/admin/config/reload" >>"$tmp/reload.codes" &
    done
    wait
  done
}
: > "$tmp/reload.codes"
reloader & rl=$!; pids+=($rl)
sleep 0.5
load_out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$URL")
kill "$rl" 2>/dev/null || true
pkill -P "$rl" 2>/dev/null || true
with=$(echo "$load_out" | p99)
reloads_ok=$(grep -c '^200$' "$tmp/reload.codes" || true)
reloads_other=$(grep -vc '^200$' "$tmp/reload.codes" || true)
runs=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^fusebox_config_reloads_total\{result="success"\}/{print $2}')

echo "== reload latency: ${DURATION}, ${CONNS} connections, workers: ${WORKERS}, $(wc -c <"$tmp/fusebox.yaml") byte config =="
echo "requests/s without reloads: $(echo "$base_out" | awk '/Requests\/sec/{print $2}')   with: $(echo "$load_out" | awk '/Requests\/sec/{print $2}')"
echo "admin reloads answered 200: $reloads_ok (other: $reloads_other); reload runs (coalesced): $runs"
echo "p99 without reloads: ${base} ms"
echo "p99 with 3 concurrent reloads in a loop: ${with} ms"
python3 -c "b=$base; w=$with; print(f'ratio: {w/b:.2f}x (target <= 2x)')"
