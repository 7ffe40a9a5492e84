#!/usr/bin/env bash
# Run the whole test suite (unit, integration on a real local Ray, multi-node).
# Creates/updates .venv first; extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_AUTH_MODE=disabled DS_ACCELERATOR=cpu
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
# Default order: the multi-node tests first (they start their own `ray start` nodes and must not
# compete with the single-node Ray that the integration tests keep alive for the whole session).
[ $# -gt 0 ] || set -- tests/multinode tests/unit tests/integration
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
