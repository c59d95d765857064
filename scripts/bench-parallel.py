#!/usr/bin/env python3
"""Throughput of N clients at once against an OpenAI-compatible server, and whether each
client's text equals what the same request gives alone.

    scripts/bench-parallel.py URL [--clients 1,2,4] [--tokens 64] [--rounds 3] [--extra JSON]

URL is the server's root (http://127.0.0.1:8080). For each N, every round sends N different
prompts at once as /v1/completions (greedy, ignore_eos, max_tokens = --tokens) and takes the
wall time from the first send to the last answer; the line gives the median over rounds of
the aggregate generated tokens per second. Before that, each prompt runs alone once: its text
is the reference, and "same" counts the answers under load that equal it.

Works against `verispec serve --parallel N` and `llama-server -np N` alike (stdlib only).
"""
import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "def quicksort(xs):\n    ",
    "The history of the Roman Empire begins",
    "Here is a list of ten useful kitchen tools:\n1.",
    "In physics, the law of conservation of energy states",
    "SELECT name, email FROM users WHERE",
    "My favourite recipe for pancakes is",
    "The three most important ideas in economics are",
]


def complete(url, prompt, tokens, extra):
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    body.update(extra)
    req = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=3600) as r:
        v = json.load(r)
    return v["choices"][0]["text"], v["usage"]["completion_tokens"]


def burst(url, prompts, tokens, extra):
    out = [None] * len(prompts)

    def client(i):
        out[i] = complete(url, prompts[i], tokens, extra)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--clients", default="1,2,4")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--extra", default="{}", help="JSON merged into every request body")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    extra = json.loads(a.extra)
    counts = [int(c) for c in a.clients.split(",")]
    if max(counts) > len(PROMPTS):
        sys.exit(f"at most {len(PROMPTS)} clients")
    # Warm up, then each prompt alone: the reference texts.
    complete(a.url, PROMPTS[0], 8, extra)
    alone = [complete(a.url, p, a.tokens, extra)[0] for p in PROMPTS[: max(counts)]]
    for n in counts:
        rates, same = [], 0
        for _ in range(a.rounds):
            wall, out = burst(a.url, PROMPTS[:n], a.tokens, extra)
            rates.append(sum(c for _, c in out) / wall)
            same += sum(t == alone[i] for i, (t, _) in enumerate(out))
        print(
            f"{a.label} clients {n}: {statistics.median(rates):.2f} tok/s aggregate "
            f"(rounds {', '.join(f'{r:.2f}' for r in rates)}); "
            f"same text as alone {same}/{n * a.rounds}",
            flush=True,
        )


if __name__ == "__main__":
    main()
