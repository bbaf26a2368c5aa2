#!/usr/bin/env python3
"""Client for benches/faults/compare.sh (Python 3 standard library only).

    client.py --url http://127.0.0.1:PORT/ [--requests N] [--threads T]
              [--deadline S] [--timeout S]
              [--trigger-after K --trigger-file FILE --trigger-wait-port PORT]

Sends N GETs in total, sequentially on each of T threads, each thread on one
keep-alive connection for as long as the proxy keeps it (a new connection is
opened only after the proxy closed it or a request failed). Stops sending
once --deadline seconds have passed (the rest count as "unsent").

--trigger-after K: after K requests have been answered (or, with
--trigger-after-seconds S, once S seconds have passed, if that comes first),
create FILE (the
"dead" endpoint starts listening when it sees it), wait up to 5 s for
127.0.0.1:PORT to accept connections, sleep --trigger-pause seconds (with
more than one thread, the others go on meanwhile), then go on.

Prints one JSON object: ok (2xx count), statuses (non-2xx status -> count),
errors (client-side failure kind -> count), unsent, connections, wall_s.
"""

import argparse
import http.client
import json
import os
import socket
import threading
import time
import urllib.parse


def wait_port(port, limit):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--deadline", type=float, default=40)
    p.add_argument("--timeout", type=float, default=10)
    p.add_argument("--trigger-after", type=int, default=0)
    p.add_argument("--trigger-file")
    p.add_argument("--trigger-wait-port", type=int, default=0)
    p.add_argument("--trigger-pause", type=float, default=0)
    p.add_argument("--trigger-after-seconds", type=float, default=0)
    p.add_argument("--interval", type=float, default=0, help="pause between a thread's requests")
    p.add_argument("--trace", help="append 'unix_time ok' (1 or 0) per answered or failed request")
    a = p.parse_args()
    trace = open(a.trace, "a", buffering=1) if a.trace else None

    u = urllib.parse.urlsplit(a.url)
    host, port, path = u.hostname, u.port or 80, u.path or "/"

    lock = threading.Lock()
    state = {"next": 0, "done": 0, "ok": 0, "unsent": 0, "connections": 0, "triggered": False}
    statuses = {}
    errors = {}
    start = time.monotonic()
    end = start + a.deadline + a.trigger_pause

    def finished(count=True):
        trigger = False
        with lock:
            if count:
                state["done"] += 1
            if (a.trigger_after or a.trigger_after_seconds) and not state["triggered"] and (
                (a.trigger_after and state["done"] >= a.trigger_after)
                or (a.trigger_after_seconds and time.monotonic() - start >= a.trigger_after_seconds)
            ):
                state["triggered"] = True
                trigger = True
        if trigger and a.trigger_file:
            open(a.trigger_file, "w").close()
            if a.trigger_wait_port:
                wait_port(a.trigger_wait_port, 5)
            time.sleep(a.trigger_pause)
        return trigger

    def worker():
        conn = None
        while True:
            if finished(count=False) and conn is not None:  # the time-based trigger
                conn.close()
                conn = None
            with lock:
                if state["next"] >= a.requests:
                    break
                state["next"] += 1
                if time.monotonic() >= end:
                    state["unsent"] += 1
                    continue
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=a.timeout)
                with lock:
                    state["connections"] += 1
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                with lock:
                    if 200 <= resp.status < 300:
                        state["ok"] += 1
                    else:
                        statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
                    if trace:
                        trace.write("%.3f %d\n" % (time.time(), 1 if 200 <= resp.status < 300 else 0))
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                kind = "timeout" if isinstance(e, socket.timeout) else type(e).__name__
                with lock:
                    errors[kind] = errors.get(kind, 0) + 1
                    if trace:
                        trace.write("%.3f 0\n" % time.time())
                conn.close()
                conn = None
            if a.interval:
                time.sleep(a.interval)
            if finished() and conn is not None:
                # After the pause, a fresh connection: a proxy's client idle
                # timeout may have closed this one meanwhile (not a fault).
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, a.threads))]
    for t in threads:
        t.start()
    for t in threads:
        # Every request is bounded by --timeout; the deadline bounds how many start.
        t.join(a.deadline + a.trigger_pause + a.timeout * 3 + 10)
    wall = time.monotonic() - start
    with lock:
        out = {
            "ok": state["ok"],
            "statuses": dict(sorted(statuses.items())),
            "errors": dict(sorted(errors.items())),
            # A paced run (--interval) is time-boxed: what it did not send is no news.
            "unsent": 0 if a.interval else state["unsent"] + (a.requests - state["next"]),
            "sent": state["next"] - state["unsent"],
            "connections": state["connections"],
            "wall_s": round(wall, 2),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
