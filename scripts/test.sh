#!/usr/bin/env bash
# Install what the tests need, build (or reuse) the random-weights checkpoint, run pytest.
#   bash scripts/test.sh                 # unit + integration tiers
#   bash scripts/test.sh -m "not integration"   # unit tier only (no model, seconds)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup_env.sh >/dev/null
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
# Integration tests load the real classes from a random-weights checkpoint, built once and
# cached under ~/.cache (never committed). An existing CHATTERBOX_CKPT_DIR is used as is.
if [[ -z "${CHATTERBOX_CKPT_DIR:-}" ]]; then
  CHATTERBOX_CKPT_DIR=$(.venv/bin/python scripts/make_random_checkpoint.py --cached --variant standard | tail -n 1)
  export CHATTERBOX_CKPT_DIR
fi
exec .venv/bin/python -m pytest "$@"
