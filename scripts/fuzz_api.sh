#!/usr/bin/env bash
# Fuzz the HTTP API: start a local cluster on the replay engine (Ray on this machine, Serve on a free
# loopback port), run schemathesis against its /openapi.json (examples, coverage and fuzzing phases;
# valid and invalid bodies for both POST routes; every route), and fail on any 5xx (check
# not_a_server_error). Prints how many requests were sent and how many got a 5xx, by route.
# FUZZ_EXAMPLES: schemathesis --max-examples per operation (default 600, which sends well over 1,000
# requests); FUZZ_SEED: a seed to replay a run. CPU-heavy for a few minutes; needs the dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_AUTH_MODE=disabled DS_ACCELERATOR=cpu
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
PY=.venv/bin/python
[ -x "$PY" ] || PY=python
exec "$PY" - "${FUZZ_EXAMPLES:-600}" "${FUZZ_SEED:-}" <<'EOF'
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from cluster.lifecycle import serve_cluster

examples, seed = sys.argv[1], sys.argv[2]
MIN_REQUESTS = 1000
# The replay engine at a fraction of its emulated cost, with a small context: a generated
# max_tokens never means a long answer. No API key: local configs leave auth off.
config = {
    "name": "fuzz",
    "proxy": {"predictor": "heuristic", "num_cpus": 0},
    "llm": {"engine": "replay", "num_replicas": 2, "batching": "continuous", "max_batch": 4,
            "context_length": 512, "time_scale": 0.001, "num_cpus": 0, "heartbeat_s": 0.5},
    "ingress": {"num_cpus": 0},
}
schemathesis = str(Path(sys.executable).with_name("schemathesis"))
start = time.monotonic()
with tempfile.TemporaryDirectory() as tmp, \
        serve_cluster(config, ray_address=None, num_cpus=None, ready_timeout_s=300) as url:
    print(f"fuzz_api: cluster ready at {url} ({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)
    har = os.path.join(tmp, "fuzz.har")
    cmd = [schemathesis, "run", f"{url}/openapi.json", "--url", url, "--checks", "not_a_server_error",
           "--mode", "all", "--phases", "examples,coverage,fuzzing", "--max-examples", examples,
           # One worker: schemathesis's workers are threads, and CPython 3.11.7's ast.parse (which
           # hypothesis calls to describe strategies) is not thread-safe (gh-106905): with two, a run
           # here died in its coverage phase with "AST constructor recursion depth mismatch".
           "--continue-on-failure", "--workers", "1", "--request-timeout", "60",
           "--generation-database", "none", "--report", "har", "--report-har-path", har, "--no-color"]
    if seed:
        cmd += ["--seed", seed]
    rc = subprocess.run(cmd).returncode
    entries = json.load(open(har))["log"]["entries"] if os.path.exists(har) else []

by_route = collections.Counter()
server_errors = collections.Counter()
for e in entries:
    route = f"{e['request']['method']} {urlsplit(e['request']['url']).path}"
    status = e["response"]["status"]
    by_route[(route, status)] += 1
    if status >= 500:
        server_errors[route] += 1
for (route, status), n in sorted(by_route.items()):
    print(f"  {route:32s} {status}: {n}")
total, n5xx = len(entries), sum(server_errors.values())
print(f"fuzz_api: {total} requests, {n5xx} 5xx (schemathesis exit {rc}; {time.monotonic() - start:.0f} s)")
if n5xx or rc != 0:
    sys.exit(f"fuzz_api: FAILED: 5xx by route {dict(server_errors)}; schemathesis exit {rc}")
if total < MIN_REQUESTS:
    sys.exit(f"fuzz_api: FAILED: only {total} requests (< {MIN_REQUESTS}); raise FUZZ_EXAMPLES")
EOF
