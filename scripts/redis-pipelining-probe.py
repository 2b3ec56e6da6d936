#!/usr/bin/env python3
"""How long Redis keeps other clients waiting behind one client's pipelined scripts.

A writer process sends the aggregator's apply script (read from aggregator/src/redis_sink.rs) in
pipelines of DEPTH calls, each call about 100 HINCRBYs over 12 day windows, as fast as Redis
takes them. Meanwhile a probe on its own connection sends PING open loop at 500/s and times each
answer from when it was due. Redis runs the commands a client has already sent back to back, so
the probe's tail grows with the depth (BENCHMARKS.md, the quota check's section).

    pip install redis
    chrt -f 3 scripts/redis-pipelining-probe.py 1 4 32    # depths to try; chrt is optional

Keys are written under `pipeprobe:` and deleted at the end.
"""

import multiprocessing
import pathlib
import re
import socket
import sys
import time

import redis

SOURCE = pathlib.Path(__file__).resolve().parent.parent / "aggregator/src/redis_sink.rs"
SCRIPT = re.search(r'const APPLY_SCRIPT: &str = r#"(.*?)"#;', SOURCE.read_text(), re.S).group(1)
FIELDS = ["req", "in", "out", "cost", "m:gpt-4o:req", "m:gpt-4o:in", "m:gpt-4o:out"]
ACCOUNTS = 5000
PROBES = 3000
PROBE_RATE = 500


def call_args(first, expires_at):
    args = []
    for k in range(first, first + 12):
        key = f"pipeprobe:u:bench-{k % ACCOUNTS}:d:20261202"
        args += ["HC", key, expires_at, len(FIELDS)]
        for f in FIELDS:
            args += [f, 3]
    return args


def resp(*args):
    """One command in the Redis protocol."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def write(depth, stop):
    # The pipeline is encoded once and sent again and again, so the writer costs next to no
    # CPU and Redis, not Python, sets the pace: as while the aggregator applies a batch.
    expires_at = int(time.time()) + 3600
    pipeline = b"".join(
        resp("EVAL", SCRIPT, 0, *call_args(12 * i, expires_at)) for i in range(depth)
    )
    conn = socket.create_connection(("127.0.0.1", 6379))
    reader = conn.makefile("rb")
    while not stop.is_set():
        conn.sendall(pipeline)
        for _ in range(depth):
            answer = reader.readline()
            if not answer.startswith(b":"):
                raise SystemExit(f"script failed: {answer!r}")


def run(depth):
    # The writer in a process of its own: in a thread, the probe would wait for the GIL.
    stop = multiprocessing.Event()
    writer = multiprocessing.Process(target=write, args=(depth, stop))
    writer.start()
    time.sleep(0.5)
    probe = socket.create_connection(("127.0.0.1", 6379))
    probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies = []
    start = time.perf_counter()
    for i in range(PROBES):
        due = start + i / PROBE_RATE
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        probe.sendall(b"PING\r\n")
        probe.recv(64)
        latencies.append((time.perf_counter() - due) * 1e3)
    stop.set()
    writer.join()
    latencies.sort()

    def q(p):
        return latencies[int(p * (len(latencies) - 1))]

    print(f"scripts in flight {depth:3}: PING ms p50 {q(0.5):.3f}  p90 {q(0.9):.3f}  "
          f"p99 {q(0.99):.3f}  max {latencies[-1]:.3f}")


def main():
    depths = [int(d) for d in sys.argv[1:]] or [1, 4, 32]
    try:
        for depth in depths:
            run(depth)
    finally:
        r = redis.Redis()
        for key in r.scan_iter("pipeprobe:*", count=1000):
            r.unlink(key)


if __name__ == "__main__":
    main()
