#!/usr/bin/env bash
# Every CPU bar of issues 4 and 5 in one interleaved loop (A B A B), as recorded in
# BENCHMARKS.md. Prints one line per measurement; medians are taken by hand from them.
#
#   scripts/bench-bars.sh LLAMA_CPP_DIR [ROUNDS]
#
# LLAMA_CPP_DIR holds builds of llama.cpp 0c1e57098 made outside this repo: build/ (the
# default GGML_NATIVE=ON) and, on an Intel machine with AMX, build-noamx/ (GGML_NATIVE=OFF; its
# prefill works where the AMX build's dies with SIGILL). Without build-noamx/ (an AMD machine)
# the noamx lines are skipped and prefill is measured on build/. Models: $SMOL (default
# models/SmolLM2-135M-Instruct.Q4_1.gguf), $Q8 and $QK (synth phi4-mini q8_0 / q4_k_m).
set -euo pipefail
P=${1:?usage: scripts/bench-bars.sh LLAMA_CPP_DIR [ROUNDS]}
ROUNDS=${2:-3}
SMOL=${SMOL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
Q8=${Q8:-/work/models-big/phi4-mini.q8_0.gguf}
QK=${QK:-/work/models-big/phi4-mini.q4_k_m.gguf}
V=target/release/verispec
NOAMX="$P/build-noamx/bin/llama-bench"
PP="$NOAMX"
[ -x "$NOAMX" ] || PP="$P/build/bin/llama-bench"
noamx() { if [ -x "$NOAMX" ]; then echo "$1 $(lb "$NOAMX" "${@:2}")"; fi; }
lb() { "$@" -o csv 2>/dev/null | tail -1 | awk -F, '{gsub(/"/,"",$(NF-1)); print $(NF-1)}'; }
vs() {
  "$V" bench "$@" --no-bandwidth --json 2>/dev/null | python3 -c \
    "import json,sys; d=json.load(sys.stdin); print('decode', round(d['decode_tok_s']['median'],3), 'prefill', round(d['prefill_tok_s']['median'],2))"
}
for r in $(seq "$ROUNDS"); do
  echo "round $r smol native $(lb "$P/build/bin/llama-bench" -m "$SMOL" -t 2 -p 0 -n 128 -r 3)"
  echo "round $r smol verispec $(vs --threads 2 -n 128 --model "$SMOL" --prompt-tokens 1)"
  echo "round $r q8 native $(lb "$P/build/bin/llama-bench" -m "$Q8" -t 2 -p 0 -n 32 -r 1)"
  noamx "round $r q8 noamx" -m "$Q8" -t 2 -p 0 -n 32 -r 1
  echo "round $r q8 verispec $(vs --model "$Q8" --threads 2 --prompt-tokens 8 -n 32 --repeats 1)"
  echo "round $r q8 pp128 peer $(lb "$PP" -m "$Q8" -t 2 -p 128 -n 0 -r 1)"
  echo "round $r q8 pp128 verispec $(vs --model "$Q8" --threads 2 --prompt-tokens 128 -n 1 --repeats 1)"
  echo "round $r qk native $(lb "$P/build/bin/llama-bench" -m "$QK" -t 2 -p 0 -n 32 -r 1)"
  noamx "round $r qk noamx" -m "$QK" -t 2 -p 0 -n 32 -r 1
  echo "round $r qk verispec $(vs --model "$QK" --threads 2 --prompt-tokens 8 -n 32 --repeats 1)"
done
for s in code_edit open code_edit open; do
  echo "suite $s $("$V" bench --suite "suites/$s.jsonl" --speculative --threads 2 --json 2>/dev/null | python3 -c \
    "import json,sys; d=json.load(sys.stdin); print('greedy', round(d['greedy_tok_s'],1), 'spec', round(d['speculative_tok_s'],1), 'speedup', round(d['speedup'],3), 'acceptance', round(d['acceptance'],3), 'exact', d['exact'])")"
done
dec() { python3 -c "import json,sys; d=json.load(sys.stdin); print(round(d['decode_tok_s']['median'],1))"; }
B=("$V" bench --model "$SMOL" -n 64 --prompt-tokens 16 --repeats 3 --no-bandwidth --json)
for r in $(seq "$ROUNDS"); do
  echo "contention idle 1 thread $("${B[@]}" --threads 1 2>/dev/null | dec)"
  sh -c 'while :; do :; done' &
  busy=$!
  sleep 1
  echo "contention busy 2 threads $("${B[@]}" --threads 2 2>/dev/null | dec)"
  kill "$busy"
  sleep 1
done
for r in $(seq "$ROUNDS"); do
  echo "q8 verify/rss/bandwidth $("$V" bench --model "$Q8" --threads 2 -n 8 --repeats 1 --prompt-tokens 16 --json 2>/dev/null | python3 -c \
    "import json,sys; d=json.load(sys.stdin); print('verify_ratio', round(d['verify_ratio'],3), 'peak_rss', d['peak_rss_bytes'], 'probe_gbs', round(d['bandwidth_gbs'],2), 'decode_pct', round(d['bandwidth_pct'],1), 'decode', round(d['decode_tok_s']['median'],3))")"
done
