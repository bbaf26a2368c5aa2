#!/usr/bin/env python3
"""Fault upstream for benches/faults/compare.sh (Python 3 standard library only).

    upstream.py MODE --port PORT [--stats FILE] [--start-when FILE] [--lifetime S]

MODE:
  ok         HTTP/1.1, keep-alive: every request gets 200 "ok\\n".
  error500   HTTP/1.1, keep-alive: every request gets 500 "error\\n".
  close      every request gets 200 "ok\\n" with Content-Length and no
             "Connection: close" (so it looks keep-alive), then the socket is
             closed right after the response is written: the keep-alive race.
  blackhole  accepts connections, reads and discards, never answers.
  cutbody    every request gets a 200 head announcing 1000 bytes, 500 of
             them, then (50 ms later) a reset: a replica failing mid-body.

--stats FILE       after every request (blackhole: every request head seen),
                   FILE is rewritten with "requests=N connections=M".
--start-when FILE  do not listen until FILE exists (connections are refused
                   until then); used for "dead-then-alive".
--lifetime S       exit by itself after S seconds (default 900), so a forgotten
                   process cannot outlive the benchmark for long.

Binds 127.0.0.1 only. Exits on SIGTERM/SIGINT.
"""

import argparse
import os
import signal
import socket
import struct
import sys
import threading
import time

MAX_HEAD = 64 * 1024


class Stats:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.requests = 0
        self.connections = 0

    def add(self, requests=0, connections=0):
        with self.lock:
            self.requests += requests
            self.connections += connections
            if self.path:
                tmp = self.path + ".tmp"
                with open(tmp, "w") as f:
                    f.write("requests=%d connections=%d\n" % (self.requests, self.connections))
                os.replace(tmp, self.path)


def read_request(conn, buf):
    """Read one request (head plus a Content-Length body) from conn.

    Returns (request_bytes, rest) or (None, rest) when the peer closed.
    """
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            return None, b""
        chunk = conn.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None, b""
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return head, rest[length:]


def response(status, reason, body):
    return (
        "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
        % (status, reason, len(body))
    ).encode() + body


OK = response(200, "OK", b"ok\n")
ERR = response(500, "Internal Server Error", b"error\n")


def serve_conn(mode, conn, stats):
    stats.add(connections=1)
    try:
        conn.settimeout(120)
        if mode == "blackhole":
            # Read and discard; count request heads only roughly ("GET " etc.).
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                n = chunk.count(b"HTTP/1.1\r\n") + chunk.count(b"HTTP/1.0\r\n")
                if n:
                    stats.add(requests=n)
        buf = b""
        while True:
            head, buf = read_request(conn, buf)
            if head is None:
                return
            if mode == "ok":
                conn.sendall(OK)
            elif mode == "error500":
                conn.sendall(ERR)
            elif mode == "close":
                conn.sendall(OK)
                stats.add(requests=1)
                return  # close right after the response, no "Connection: close"
            elif mode == "cutbody":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n" + b"x" * 500)
                stats.add(requests=1)
                time.sleep(0.05)
                # A reset (linger 0), not a clean close.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            stats.add(requests=1)
    except OSError:
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["ok", "error500", "close", "blackhole", "cutbody"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--stats")
    p.add_argument("--start-when")
    p.add_argument("--lifetime", type=float, default=900)
    a = p.parse_args()

    deadline = time.monotonic() + a.lifetime
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))

    stats = Stats(a.stats)
    stats.add()  # write the file with zeros

    if a.start_when:
        while not os.path.exists(a.start_when):
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.host, a.port))
    srv.listen(1024)
    srv.settimeout(0.5)
    print("listening on %s:%d mode=%s" % (a.host, a.port, a.mode), flush=True)
    while time.monotonic() < deadline:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        except OSError:
            continue
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve_conn, args=(a.mode, conn, stats), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
