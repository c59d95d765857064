#!/usr/bin/env python3
"""Inter-token latency of one streaming client while another client's long prompt runs.

    scripts/bench-latency.py URL PROMPT_WORDS A_TOKENS

Client A streams A_TOKENS tokens from a short prompt; after A's third chunk, client B sends a
prompt of PROMPT_WORDS words (max_tokens 1). Prints A's median and largest gap between text
chunks, the time A spent in gaps over twice the median, and B's time to its answer.
"""
import json, sys, threading, time, urllib.request
if len(sys.argv) != 4:
    sys.exit("usage: scripts/bench-latency.py URL PROMPT_WORDS A_TOKENS")
url = sys.argv[1]; n_long = int(sys.argv[2]); n_a = int(sys.argv[3])
def post(body, stream=False):
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=3600)
times = []  # arrival of each of A's text chunks
started = threading.Event()
def a():
    r = post({"prompt": "Once upon a time", "max_tokens": n_a, "ignore_eos": True, "stream": True, "speculative": False})
    for line in r:
        if line.startswith(b"data: {") and b'"text":"' in line:
            times.append(time.perf_counter())
            if len(times) == 3: started.set()
b_lat = []
def b():
    started.wait()
    t0 = time.perf_counter()
    long_prompt = " ".join(["word"] * n_long)
    post({"prompt": long_prompt, "max_tokens": 1, "speculative": False}).read()
    b_lat.append(time.perf_counter() - t0)
ta = threading.Thread(target=a); tb = threading.Thread(target=b)
ta.start(); tb.start(); ta.join(); tb.join()
gaps = [y - x for x, y in zip(times, times[1:])]
gaps.sort()
print(f"A: {len(times)} chunks, median gap {gaps[len(gaps)//2]*1e3:.0f} ms, max gap {gaps[-1]*1e3:.0f} ms, sum of gaps > 2x median {sum(g for g in gaps if g > 2*gaps[len(gaps)//2]):.2f} s; B prompt+1 token {b_lat[0]:.2f} s")
