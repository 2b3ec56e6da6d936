#!/usr/bin/env python3
"""A model of one partition's flushes: how the order in which a flush writes its accounts'
snapshots changes how long an event waits for Redis (aggregator/src/state/partition.rs, "Why
the oldest change is written first"; BENCHMARKS.md, twelfth session).

Under load a flush takes about as long as the interval it collected, D: flush k is taken at
k*D and writes its accounts one after another, evenly over the next D. Each account's events
arrive as a Poisson process of rate lam; probes are accounts with a single event, as in
`meterline-bench e2e`. The model prints, in units of D, the p50 and p99 of the wait from an
event's arrival to its account's snapshot written, for the probes and for all other events, with
the accounts written in a random order (a hash map's) and oldest unwritten event first.

    python3 scripts/flush-order-model.py
"""
import random


def quantile(xs, p):
    xs = sorted(xs)
    return xs[int(p * (len(xs) - 1))]


def model(order, lam, d=1.0, accounts=2000, cycles=30, seed=1):
    rnd = random.Random(seed)
    events = []
    for a in range(accounts):
        t = rnd.expovariate(lam)
        while t < cycles * d:
            events.append((t, a))
            t += rnd.expovariate(lam)
    probes = [(rnd.uniform(d, (cycles - 2) * d), accounts + i) for i in range(3000)]
    arrivals = sorted(events + probes)
    waits = {"probes": [], "events": []}
    i = 0
    for k in range(1, cycles):
        taken = k * d
        unwritten = {}
        while i < len(arrivals) and arrivals[i][0] < taken:
            t, a = arrivals[i]
            unwritten.setdefault(a, []).append(t)
            i += 1
        job = list(unwritten.items())
        if order == "oldest first":
            job.sort(key=lambda item: item[1][0])
        else:
            rnd.shuffle(job)
        for place, (a, times) in enumerate(job):
            written = taken + (place + 1) / len(job) * d
            kind = "probes" if a >= accounts else "events"
            waits[kind].extend(written - t for t in times)
    return {k: (quantile(v, 0.5), quantile(v, 0.99)) for k, v in waits.items()}


if __name__ == "__main__":
    print("lam*D  order         probes p50  p99    other events p50  p99   (units of D)")
    for lam_d in [0.2, 1.0, 2.0, 6.0, 8.0]:
        for order in ["random", "oldest first"]:
            w = model(order, lam_d)
            print(
                f"{lam_d:5.1f}  {order:12}  {w['probes'][0]:10.2f}  {w['probes'][1]:4.2f}"
                f"    {w['events'][0]:16.2f}  {w['events'][1]:4.2f}"
            )
