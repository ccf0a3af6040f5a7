#!/usr/bin/env bash
# Create (or reuse) the Python environment for this worker and link it as ./.venv.
#
# The environment is keyed by the hash of the requirement files and kept under
# ~/.cache, so a fresh clone on the same machine reuses it instead of spending
# minutes reinstalling torch. Set VENV_DIR to put it somewhere else.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
key=$(cat requirements.txt requirements-nodeps.txt requirements-test.txt scripts/setup_env.sh | sha256sum | cut -c1-16)
VENV_DIR=${VENV_DIR:-$HOME/.cache/chatterbox-worker/venv-$key}

if [[ ! -f "$VENV_DIR/.complete" ]]; then
  echo "setup_env: creating $VENV_DIR (a few minutes: torch is large)" >&2
  rm -rf "$VENV_DIR"
  "$PYTHON" -m venv "$VENV_DIR"
  pip_() { "$VENV_DIR/bin/python" -m pip install --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
  pip_ --upgrade pip
  pip_ -r requirements.txt -r requirements-test.txt
  pip_ --no-deps -r requirements-nodeps.txt
  "$VENV_DIR/bin/python" -c "import chatterbox.tts, chatterbox.vc, perth, runpod, soundfile" \
    || { echo "setup_env: import check failed" >&2; exit 1; }
  touch "$VENV_DIR/.complete"
fi
ln -sfn "$VENV_DIR" .venv
echo "$VENV_DIR"
