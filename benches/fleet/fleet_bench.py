#!/usr/bin/env python3
"""The fleet's figures (issue 21; SPEC: "A fleet of sidecars"), standalone
and with `fleet:` side by side. Python 3 standard library only.

    python3 benches/fleet/fleet_bench.py [--bin target/release/fusebox]
        [--members 8] [--rate 50] [--trials 5] [--threshold 5] [--quorum 2]

Starts one redis-server (no persistence), one upstream that can be told to
fail, and N fusebox members (each its own process, data and admin port),
each sent the same steady load (--rate GETs per second). Measured:

1. The upstream fails at t0: requests that still reach it afterwards,
   summed over the fleet (standalone: about N x threshold).
2. Time from the quorum's second own-evidence trip to every member open
   (over --trials runs: each run fails the upstream, waits, heals it).
3. Trial requests per recovery: members that went half-open.
4. Poison: one member's own path is broken (its endpoint refuses): fleet
   verdicts and the others' success rate.
5. Redis killed under load, restarted 10 s later: client-visible errors,
   and the time until every member is connected again.
6. A force-open on one member's admin API: time until it is in force on all.

Figure 7 (instructions per request with `fleet:` on and off) is not
measured here: the fleet has no code on the request path (see
benches/load/callgrind.sh for the data path's count).
"""

import argparse
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, limit=10):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Upstream:
    """Answers 200, or 500 while failing; counts what reaches it."""

    def __init__(self):
        self.failing = False
        self.hits = 0
        self.lock = threading.Lock()
        me = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                with me.lock:
                    me.hits += 1
                    status = 500 if me.failing else 200
                body = b"ok" if status == 200 else b"down"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.port = free_port()
        self.srv = S(("127.0.0.1", self.port), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def count(self):
        with self.lock:
            return self.hits


def get_json(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=2) as r:
        return json.loads(r.read())


def post_json(port, path, body):
    req = urllib.request.Request(
        "http://127.0.0.1:%d%s" % (port, path), data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


class Member:
    def __init__(self, binary, tmp, idx, endpoint, fleet, threshold):
        self.id = "m%d" % idx
        self.data = free_port()
        self.admin = free_port()
        cfg = os.path.join(tmp, "%s.yaml" % self.id)
        with open(cfg, "w") as f:
            f.write("listen: 127.0.0.1:%d\nadmin: { listen: 127.0.0.1:%d }\nauth: none\n" % (self.data, self.admin))
            if fleet:
                f.write("fleet: { redis: '%s', name: bench, member: %s, quorum: %d, heartbeat: 500ms }\n" % (fleet[0], self.id, fleet[1]))
            f.write(
                "upstreams:\n  payments:\n    endpoints: [%s]\n    startupGrace: 0s\n"
                "    breaker: { failureThreshold: %d, resetTimeout: 2s, maxResetTimeout: 2s, jitter: 0 }\n"
                "routes:\n  - { match: { pathPrefix: / }, upstream: payments }\n" % (endpoint, threshold)
            )
        self.proc = subprocess.Popen([binary, "run", "-c", cfg], stdout=subprocess.DEVNULL, stderr=open(cfg + ".log", "w"), env=dict(os.environ, RUST_LOG="warn"))
        if not wait_port(self.admin):
            sys.exit("member %s did not start (see %s.log)" % (self.id, cfg))

    def circuit(self):
        v = get_json(self.admin, "/health/circuit-breakers")
        return next(c for c in v["circuitBreakers"] if c["service"] == "payments")

    def metric(self, name):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.admin, timeout=2) as r:
            total = 0.0
            for line in r.read().decode().splitlines():
                if line.startswith(name):
                    total += float(line.rsplit(" ", 1)[1])
            return total

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Load:
    """--rate GETs per second on every member; counts statuses."""

    def __init__(self, members, rate):
        self.stop = False
        self.ok = 0
        self.errors = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(m, rate), daemon=True) for m in members]
        for t in self.threads:
            t.start()

    def run(self, m, rate):
        conn = None
        while not self.stop:
            t = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", m.data, timeout=5)
                conn.request("GET", "/pay")
                r = conn.getresponse()
                r.read()
                with self.lock:
                    if r.status == 200:
                        self.ok += 1
                    elif r.status not in (500, 503):
                        self.errors += 1
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.errors += 1
                conn = None
            time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - t)))

    def end(self):
        self.stop = True
        for t in self.threads:
            t.join(10)


def all_state(members, state):
    return all(m.circuit()["state"] == state for m in members)


def wait_until(pred, limit):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def parse_at(s):
    # RFC 3339 with milliseconds, UTC ("...T12:00:00.123Z")
    import datetime

    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def outage_run(members, up, trials):
    """Figures 1-3 over `trials` outages: failed requests after t0, time
    from the second own-evidence trip to all open, members half-open."""
    failed, spread, half = [], [], []
    for _ in range(trials):
        wait_until(lambda: all_state(members, "closed"), 30)
        before_half = sum(m.metric('fusebox_circuit_transitions_total{from="open",reason="reset-timeout",to="half-open",upstream="payments"}') for m in members)
        t0hits = up.count()
        up.failing = True
        opened = wait_until(lambda: all_state(members, "open"), 20)
        failed.append(up.count() - t0hits)
        if opened:
            ats = []
            for m in members:
                c = m.circuit()
                lt = c.get("lastTransition") or {}
                ats.append((parse_at(lt["at"]) if lt.get("at") else 0, lt.get("rule")))
            own = sorted(t for t, rule in ats if rule != "fleet")
            if len(own) >= 2:
                spread.append(max(t for t, _ in ats) - own[1])
        up.failing = False
        wait_until(lambda: all_state(members, "closed"), 30)
        after_half = sum(m.metric('fusebox_circuit_transitions_total{from="open",reason="reset-timeout",to="half-open",upstream="payments"}') for m in members)
        half.append(after_half - before_half)
    return failed, spread, half


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q * len(v) + 0.5)) - 1))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default=os.path.join(ROOT, "target/release/fusebox"))
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--rate", type=float, default=50)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--threshold", type=int, default=5)
    p.add_argument("--quorum", type=int, default=2)
    a = p.parse_args()
    if not shutil.which("redis-server"):
        sys.exit("needs redis-server (apt-get install redis-server)")
    tmp = tempfile.mkdtemp(prefix="fusebox-fleet-bench.")
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    wait_port(rport)
    url = "redis://127.0.0.1:%d/0" % rport
    up = Upstream()
    endpoint = "http://127.0.0.1:%d" % up.port
    results = {}
    procs = []
    try:
        for mode in ("standalone", "fleet"):
            fleet = (url, a.quorum) if mode == "fleet" else None
            members = [Member(a.bin, tmp, i, endpoint, fleet, a.threshold) for i in range(a.members)]
            procs += members
            if fleet:
                wait_until(lambda: all(get_json(m.admin, "/api/admin/fleet").get("connected") for m in members), 15)
                wait_until(lambda: all(len(get_json(m.admin, "/api/admin/fleet").get("members", [])) == a.members for m in members), 15)
            load = Load(members, a.rate)
            time.sleep(2)
            failed, spread, half = outage_run(members, up, a.trials)
            load.end()
            r = {"failed_after_t0": failed, "trip_spread_s": [round(s, 3) for s in spread], "half_open_per_recovery": half}
            if fleet:
                # 6. force-open propagation
                load = Load(members, a.rate)
                t = time.monotonic()
                post_json(members[0].admin, "/api/admin/circuit-breaker/payments/force", {"state": "forced-open", "reason": "bench"})
                wait_until(lambda: all_state(members, "forced-open"), 10)
                r["force_open_all_s"] = round(time.monotonic() - t, 3)
                post_json(members[0].admin, "/api/admin/circuit-breaker/payments/force", {"state": "auto", "reason": "bench over"})
                wait_until(lambda: all_state(members, "closed"), 10)
                # 5. Redis killed under load, restarted 10 s later
                errors0 = load.errors
                redis.kill()
                redis.wait()
                time.sleep(10)
                redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
                wait_port(rport)
                t = time.monotonic()
                wait_until(lambda: all(get_json(m.admin, "/api/admin/fleet").get("connected") for m in members), 30)
                r["redis_back_all_connected_s"] = round(time.monotonic() - t, 3)
                load.end()
                r["client_errors_redis_outage"] = load.errors - errors0
            for m in members:
                m.stop()
            results[mode] = r
        # 4. Poison: one member's own path refuses.
        dead = "http://127.0.0.1:%d" % free_port()
        members = [Member(a.bin, tmp, 100 + i, dead if i == 0 else endpoint, (url, a.quorum), a.threshold) for i in range(a.members)]
        procs += members
        wait_until(lambda: all(len(get_json(m.admin, "/api/admin/fleet").get("members", [])) == a.members for m in members), 15)
        others = Load(members[1:], a.rate)
        poisoned = Load(members[:1], a.rate)
        time.sleep(10)
        others.end()
        poisoned.end()
        verdicts = sum(m.metric("fusebox_fleet_verdicts_total") for m in members)
        results["poison"] = {"fleet_verdicts": verdicts, "others_ok": others.ok, "others_errors": others.errors, "poisoned_member_state": members[0].circuit()["state"]}
        for m in members:
            m.stop()
    finally:
        for m in procs:
            try:
                m.stop()
            except Exception:
                pass
        redis.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    s, f = results["standalone"], results["fleet"]
    print("| figure | standalone | fleet |")
    print("|---|---|---|")
    print("| 1. requests reaching the failed upstream after t0 (sum over %d members; per outage) | %s | %s |" % (a.members, s["failed_after_t0"], f["failed_after_t0"]))
    print("| 2. second own-evidence trip -> every member open, s (p50 / max over %d) | %.3f / %.3f | %.3f / %.3f |" % (
        a.trials, pct(s["trip_spread_s"], 0.5), max(s["trip_spread_s"] or [float("nan")]), pct(f["trip_spread_s"], 0.5), max(f["trip_spread_s"] or [float("nan")])))
    print("| 3. members half-open per recovery | %s | %s |" % (s["half_open_per_recovery"], f["half_open_per_recovery"]))
    print("| 4. poison: fleet verdicts; the other members' ok / errors | - | %d; %d / %d (member 0: %s) |" % (
        results["poison"]["fleet_verdicts"], results["poison"]["others_ok"], results["poison"]["others_errors"], results["poison"]["poisoned_member_state"]))
    print("| 5. Redis killed 10 s under load: client-visible errors; all reconnected after, s | - | %d; %.3f |" % (f["client_errors_redis_outage"], f["redis_back_all_connected_s"]))
    print("| 6. force-open on one member in force on all, s | - | %.3f |" % f["force_open_all_s"])
    print()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
