#!/usr/bin/env bash
# Fetch the wheels that the benchmarks (bench/decode.py, bench/voice_path.py) need on an
# offline GPU machine and that its image lacks, into .whl/ at the repository root; copy .whl/
# along with the working tree and run bench/device_run.sh there.
#
#     bash scripts/device_wheels.sh
#
# The GPU machine has no network. Its python3 (3.12, x86-64) already holds torch 2.11.0+cu130,
# torchaudio 2.11.0, numpy 2.5.x, transformers 5.17, tokenizers, safetensors, huggingface_hub,
# onnx, scipy, numba/llvmlite, scikit-learn, joblib, lazy-loader, msgpack, einops, tqdm,
# filelock, prometheus-client, psutil, httpx, anyio, h11, click, pyyaml, requests, pillow and
# regex, and those are used as they are: only what is
# absent there travels. Only the STANDARD model is benchmarked (no pykakasi, spacy-pkuseg,
# pyloudnorm). bench/device_run.sh installs the set with pip --no-index --no-deps --target.
#
# Not carried: av (PyAV, 38 MiB with its bundled ffmpeg). Only bench/http.py needs it (its
# requests ask for mp3); with resemble-perth's 33 MiB it would break the 50 MiB cap here and
# the 64 MiB carry limit, so bench/device_run.sh skips http.py when av is missing.
# WITH_AV=1 adds it, with fastapi, starlette, opentelemetry-api and uvicorn (http.py's server),
# for a session that drops something else to make room (the cap check still applies).
#
# Idempotent: pip skips wheels already in .whl/; files that are not in the list are removed.
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=.whl
LIMIT_MIB=50
PY=${PYTHON:-python3}
mkdir -p "$DEST"

# Keep .whl/ out of git (info/exclude is local and untracked).
EXCLUDE=$(git rev-parse --git-path info/exclude 2>/dev/null || echo .git/info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
grep -qxF '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >>"$EXCLUDE"

WHEELS=(
  # The TTS library itself (the repo installs it --no-deps: requirements-nodeps.txt).
  chatterbox-tts==0.1.7
  # chatterbox.models.s3tokenizer imports it (requirements-nodeps.txt pin).
  s3tokenizer==0.3.0
  # chatterbox (mel filters, voice encoder, resampling) and the repo's audio/codec.py /
  # optimized_chatterbox; chatterbox-tts pins 0.11.0.
  librosa==0.11.0
  # librosa.core.audio imports audioread at module level (perth too).
  audioread==3.1.0
  # librosa's resampler (res_type soxr_hq, the conditionals' resampler); binary, abi3.
  soxr==1.1.0
  # librosa._cache and librosa.util.decorators import decorator.
  decorator==5.3.1
  # librosa.util.files imports pooch at module level ...
  pooch==1.9.0
  # ... and pooch imports platformdirs.
  platformdirs==4.14.8
  # audio/codec.py / optimized_voice_library read and write WAV through it; bundles libsndfile.
  soundfile==0.13.1
  # soundfile's binding (_cffi_backend); not in the device image.
  cffi==2.1.1
  # S3Gen's decoder attention blocks; chatterbox-tts pins 0.29.0.
  diffusers==0.29.0
  # S3Gen decoder's ConformerBlock; chatterbox-tts pins 0.3.2.
  conformer==0.3.2
  # The watermarker ChatterboxTTS.__init__ builds (33 MiB: its pretrained weights); every
  # job watermarks by default.
  resemble-perth==1.0.1
  # chatterbox.models.s3gen.flow imports omegaconf.DictConfig ...
  omegaconf==2.3.0
  # ... whose generated grammar needs the 4.9 runtime (4.10+ cannot read its ATN).
  # Sdist only on PyPI: built into a py3-none-any wheel below.
  antlr4-python3-runtime==4.9.3
  # perth imports pkg_resources, which setuptools 82 removed (torch 2.11 asks for <82, but
  # the image's version is not known); without it from_local fails with a TypeError.
  setuptools==80.9.0
  # chatterbox_worker/settings.py, contract/request_schema.py, http/openai_speech.py (pydantic 2) ...
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  # ... pydantic-core 2.50 needs typing-extensions>=4.16; the image's version is not known.
  typing-extensions==4.16.0
  # chatterbox_worker/settings.py: BaseSettings (and its python-dotenv import).
  pydantic-settings==2.16.3
  python-dotenv==1.2.4
  # chatterbox_worker/conditionals/cache.py and voices/array_cache.py: byte-bounded LRUs.
  cachetools==6.2.1
)
if [[ "${WITH_AV:-0}" == 1 ]]; then
  # bench/http.py only (decode.py and voice_path.py import none of these):
  WHEELS+=(
    av==15.1.0                # the mp3 responses it asks for (PyAV, with its own ffmpeg)
    fastapi==0.165.0          # server.py
    starlette==1.10.0         # fastapi's base, and server.py's HTTPException
    opentelemetry-api==1.45.2 # fastapi 0.165's telemetry module imports it
    uvicorn==0.54.0           # serves the app on 127.0.0.1
  )
fi

PLATFORM_ARGS=(--python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux1_x86_64)

binary=() sdist=()
for spec in "${WHEELS[@]}"; do
  case "$spec" in
    antlr4-python3-runtime==*) sdist+=("$spec") ;;
    *) binary+=("$spec") ;;
  esac
done

"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  "${PLATFORM_ARGS[@]}" -d "$DEST" "${binary[@]}"

# Pure-Python sdists: build a wheel here (any interpreter builds the same py3-none-any wheel).
for spec in "${sdist[@]}"; do
  name=${spec%%==*} version=${spec#*==}
  stem=$(echo "$name" | tr '-' '_')-$version
  if ! ls "$DEST/$stem"-py3-none-any.whl >/dev/null 2>&1; then
    "$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-binary "$name" -w "$DEST" "$spec"
  fi
done

# Drop anything left from an older list (or a stray build), so the set is exactly this one.
expected=$(for spec in "${WHEELS[@]}"; do n=${spec%%==*}; echo "${n//-/_}-${spec#*==}-" | tr 'A-Z' 'a-z'; done)
for f in "$DEST"/*.whl; do
  base=$(basename "$f" | tr 'A-Z' 'a-z')
  keep=0
  while read -r prefix; do [[ "$base" == "$prefix"* ]] && keep=1 && break; done <<<"$expected"
  if [[ $keep == 0 ]]; then echo "removing $f (not in the list)"; rm -f "$f"; fi
done

count=$(ls "$DEST"/*.whl | wc -l)
if [[ $count -ne ${#WHEELS[@]} ]]; then
  echo "expected ${#WHEELS[@]} wheels in $DEST, found $count" >&2
  exit 1
fi
ls -l "$DEST"/*.whl | awk '{printf "%8.2f MiB  %s\n", $5 / 1048576, $NF}' | sort -rn
bytes=$(cat "$DEST"/*.whl | wc -c)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')
echo "total: $count wheels, $mib MiB in $DEST"
if (( bytes > LIMIT_MIB * 1048576 )); then
  echo "over the ${LIMIT_MIB} MiB cap: the working tree plus carried paths must stay under 64 MiB" >&2
  exit 1
fi
