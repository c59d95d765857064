#!/usr/bin/env bash
# Side-by-side decode/prefill figures: verispec vs an already-built llama-bench, interleaved
# (A B A B ...) on the same GGUF with the same thread count. Prints one line per run and the
# medians with their ratio. It builds nothing: pass the path of your llama-bench.
#
# usage: scripts/bench-vs-llamacpp.sh LLAMA_BENCH MODEL [ROUNDS=3] [THREADS=2] [N_DECODE=32] [N_PROMPT=128]
set -euo pipefail
lb=${1:?path to llama-bench}; model=${2:?model.gguf}
rounds=${3:-3}; t=${4:-2}; n=${5:-32}; p=${6:-128}
vs=${VERISPEC:-target/release/verispec}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for r in $(seq 1 "$rounds"); do
  "$lb" -m "$model" -t "$t" -p 0 -n "$n" -r 1 -o json > "$tmp/l_tg_$r.json" 2>/dev/null
  "$vs" bench --model "$model" --threads "$t" --prompt-tokens 8 -n "$n" --repeats 1 --no-bandwidth --json > "$tmp/v_tg_$r.json" 2>/dev/null
  "$lb" -m "$model" -t "$t" -p "$p" -n 0 -r 1 -o json > "$tmp/l_pp_$r.json" 2>/dev/null
  "$vs" bench --model "$model" --threads "$t" --prompt-tokens "$p" -n 1 --repeats 1 --no-bandwidth --json > "$tmp/v_pp_$r.json" 2>/dev/null
  echo "round $r done" >&2
done
"$vs" bench --model "$model" --threads "$t" --prompt-tokens 8 -n 4 --repeats 1 --json > "$tmp/probe.json" 2>/dev/null
python3 - "$tmp" "$rounds" "$model" "$t" "$n" "$p" <<'PY'
import json, statistics, sys
d, rounds, model, t, n, p = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
def l(name): return json.load(open(f"{d}/{name}.json"))[0]["avg_ts"]
def v(name, key): return json.load(open(f"{d}/{name}.json"))[key]["median"]
ltg = [l(f"l_tg_{r}") for r in range(1, rounds + 1)]
vtg = [v(f"v_tg_{r}", "decode_tok_s") for r in range(1, rounds + 1)]
lpp = [l(f"l_pp_{r}") for r in range(1, rounds + 1)]
vpp = [v(f"v_pp_{r}", "prefill_tok_s") for r in range(1, rounds + 1)]
probe = json.load(open(f"{d}/probe.json"))
gb = probe["weight_bytes_per_token"] / 1e9
bw = probe["bandwidth_gbs"]
for r in range(rounds):
    print(f"round {r+1}: tg{n} llama.cpp {ltg[r]:.2f} verispec {vtg[r]:.2f} | pp{p} llama.cpp {lpp[r]:.2f} verispec {vpp[r]:.2f}")
m = statistics.median
print(f"model {model}, {t} threads, {rounds} interleaved rounds (medians)")
print(f"decode  tg{n}: llama.cpp {m(ltg):.2f} tok/s, verispec {m(vtg):.2f} tok/s, ratio {m(vtg)/m(ltg):.2f}x")
print(f"prefill pp{p}: llama.cpp {m(lpp):.2f} tok/s, verispec {m(vpp):.2f} tok/s, ratio {m(vpp)/m(lpp):.2f}x")
print(f"bandwidth probe {bw:.1f} GB/s; {gb:.3f} GB/token: verispec decode at {100*m(vtg)*gb/bw:.0f}%, llama.cpp at {100*m(ltg)*gb/bw:.0f}% of it")
PY
