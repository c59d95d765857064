#!/usr/bin/env bash
# Teacher-forced agreement of llama.cpp with its own SmolLM2 goldens, the way issue 3 measures
# ours. Builds a small program against an existing llama.cpp build (nothing is built here from
# llama.cpp's sources) in a temp dir, outside the repo.
#   scripts/llamacpp-teacher-forced/run.sh LLAMA_CPP_DIR [BUILD_SUBDIR (default build-noamx)]
# Variants: step (prompt in one pass, then one golden token per pass: how the goldens were
# made), the same with flash attention off (f16 and f32 KV), batch with n_ubatch 512 (prompt +
# goldens in one pass), batch with n_ubatch 32.
set -euo pipefail
L=$(cd "$1" && pwd); B=${2:-build-noamx}
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd)
model=$root/models/SmolLM2-135M-Instruct.Q4_1.gguf
work=$(mktemp -d)
g++ -O2 -std=c++17 "$here/tf.cpp" -I"$L/include" -I"$L/ggml/include" -L"$L/$B/bin" -lllama -o "$work/tf"
python3 "$here/analyze.py" "$root/testdata/golden" > "$work/records.txt"
export LD_LIBRARY_PATH="$L/$B/bin"
"$work/tf" "$model" "$work/records.txt" step 512 2 > "$work/step.txt"
"$work/tf" "$model" "$work/records.txt" step 512 2 off f16 > "$work/step_fa_off.txt"
"$work/tf" "$model" "$work/records.txt" step 512 2 off f32 > "$work/step_fa_off_f32.txt"
"$work/tf" "$model" "$work/records.txt" batch 512 2 > "$work/batch512.txt"
"$work/tf" "$model" "$work/records.txt" batch 32 2 > "$work/batch32.txt"
cd "$work" && python3 "$here/analyze.py" "$root/testdata/golden" step.txt step_fa_off.txt step_fa_off_f32.txt \
  batch512.txt batch32.txt
