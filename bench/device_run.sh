#!/usr/bin/env bash
# Run the GPU benchmarks on an offline GPU machine, from the repository root:
#
#     bash bench/device_run.sh          # bench/decode.py only (the main benchmark)
#     bash bench/device_run.sh all      # and bench/voice_path.py, bench/http.py
#     bash bench/device_run.sh long     # bench/s3gen_ragged.py and bench/longform.py instead
#
# Prepare the wheels first where there is network (bash scripts/device_wheels.sh) and copy
# .whl/ along with the working tree. $OUT names the folder the JSON results and log.txt are
# written to. The GPU machine has no network: the wheels are installed with
# --no-index into $SITE (default /tmp/site) and put first on PYTHONPATH, over the image's
# own packages (torch, numpy, transformers ... are the image's).
#
# Every step runs under `timeout`, inside an overall budget (BUDGET_S, default 500 s), so the
# script ends inside 10 minutes, with whatever finished already in $OUT.
# Environment knobs (for a CPU rehearsal elsewhere): PYTHON (default python3), BENCH_DEVICE
# (default cuda), SITE, CHATTERBOX_CKPT_CACHE, DECODE_ARGS (extra bench/decode.py flags),
# VOICE_REPS (default 10).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1

MODE=${1:-decode}
PY=${PYTHON:-python3}
DEVICE=${BENCH_DEVICE:-cuda}
SITE=${SITE:-/tmp/site}
BUDGET_S=${BUDGET_S:-500}
START=$SECONDS
FAILED=()

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
# The random checkpoint is built into a scratch cache (the key follows the torch and
# chatterbox versions, so a warm machine reuses it on the next call).
export CHATTERBOX_CKPT_CACHE=${CHATTERBOX_CKPT_CACHE:-/tmp/chatterbox-ckpt}

left() { echo $((BUDGET_S - (SECONDS - START))); }

# step NAME CAP_S CMD...: run CMD under timeout min(CAP_S, time left - 15 s).
step() {
  local name=$1 cap=$2; shift 2
  local t; t=$(left); t=$((t - 15)); ((t > cap)) && t=$cap
  if ((t < 30)); then
    echo "=== SKIP $name: only $(left) s of the ${BUDGET_S} s budget left"; FAILED+=("$name(skipped)"); return 1
  fi
  echo "=== $name (timeout ${t} s, $(date -u +%H:%M:%S), ${SECONDS}s elapsed): $*"
  local t0=$SECONDS rc=0
  timeout -k 10 "$t" "$@" || rc=$?
  if ((rc == 0)); then
    echo "=== $name: ok in $((SECONDS - t0)) s"
  else
    echo "=== $name: FAILED rc=$rc after $((SECONDS - t0)) s$( ((rc == 124 || rc == 137)) && echo ' (timed out)')"
    FAILED+=("$name(rc=$rc)")
  fi
  return $rc
}

echo "=== device_run.sh $MODE: $(date -u), python $PY, device $DEVICE, budget ${BUDGET_S} s"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi
  GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
else
  echo "(no nvidia-smi)"; GPU=""
fi
TAG=$(echo "$GPU" | grep -oiE 'h100|h200|a100|l40s|b200' | head -1 | tr 'A-Z' 'a-z')
[[ -n "$TAG" ]] || TAG=$DEVICE

# 1. The carried wheels.
shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]} == 0)); then
  echo "no wheels in .whl/: run scripts/device_wheels.sh here and carry \".whl\"" >&2
  exit 2
fi
# setuptools travels only for perth's pkg_resources: keep the image's own where it has one.
if "$PY" -c "import pkg_resources" >/dev/null 2>&1; then
  keep=()
  for w in "${wheels[@]}"; do [[ $(basename "$w") == setuptools-* ]] || keep+=("$w"); done
  wheels=("${keep[@]}")
  echo "the image's setuptools has pkg_resources: not installing the carried setuptools"
fi
step "pip install ${#wheels[@]} wheels" 120 "$PY" -m pip install -q --disable-pip-version-check \
  --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" || exit 3
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# 2. Versions, and the imports the benchmarks need (fails fast, before the long steps).
step "versions and imports" 120 "$PY" - <<'EOF' || exit 4
import importlib.metadata as md, sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
for dist in ("torchaudio", "numpy", "transformers", "tokenizers", "safetensors", "huggingface_hub",
             "diffusers", "librosa", "chatterbox-tts", "s3tokenizer", "resemble-perth", "setuptools",
             "pydantic", "scipy", "numba", "onnx", "av"):
    try:
        print(f"  {dist} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"  {dist} (absent)")
import perth
assert perth.PerthImplicitWatermarker is not None, "perth's watermarker did not import (pkg_resources?)"
import chatterbox.tts, handler, optimized_chatterbox, chatterbox_worker.settings  # noqa: E401,F401
print("imports ok")
EOF

# 3. The standard random-weights checkpoint (bench/random_checkpoint.py finds it there).
step "random checkpoint (standard)" 240 "$PY" scripts/make_random_checkpoint.py --cached --variant standard \
  || exit 5

# 4. The benchmarks.
if [[ "$MODE" == long ]]; then
  step "bench/s3gen_ragged.py" 150 "$PY" bench/s3gen_ragged.py --device "$DEVICE" --out "$OUT/$TAG-s3gen-ragged.json"
  step "bench/longform.py" 300 "$PY" bench/longform.py --device "$DEVICE" --tokens 200 \
    --out "$OUT/$TAG-longform.json" --picture "$OUT/$TAG-longform-timeline.png"
else
  # shellcheck disable=SC2086  # DECODE_ARGS is a list of flags
  step "bench/decode.py" 330 "$PY" bench/decode.py --device "$DEVICE" --out "$OUT/$TAG-decode.json" ${DECODE_ARGS:-}
fi
if [[ "$MODE" == all ]]; then
  step "bench/voice_path.py" 180 "$PY" bench/voice_path.py --device "$DEVICE" --reps "${VOICE_REPS:-10}" \
    --out "$OUT/$TAG-voice-path.json"
  if "$PY" -c "import av, uvicorn, fastapi" 2>/dev/null; then
    step "bench/http.py" 180 "$PY" bench/http.py --device "$DEVICE" --out "$OUT/$TAG-http.json"
  else
    echo "=== SKIP bench/http.py: PyAV (mp3) or uvicorn/fastapi not installed (see scripts/device_wheels.sh)"
    FAILED+=("http(skipped: no av)")
  fi
fi

echo "=== done in $((SECONDS - START)) s; results in $OUT:"
ls -l "$OUT"
if ((${#FAILED[@]})); then
  echo "=== not ok: ${FAILED[*]}"
  exit 1
fi
echo "=== all ok"
