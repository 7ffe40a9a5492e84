"""Bad arguments to ``loadgen run``, ``report`` and ``compare`` exit with code 2 and say what is wrong.

Every case here fails before any network call, so no server is needed.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from loadgen.cli import main


@pytest.fixture
def workload_file(tmp_path):
    path = tmp_path / "w.parquet"
    pq.write_table(pa.table({"request_id": ["a"], "arrival_s": [0.0], "prompt": ["hi"]}), path)
    return str(path)


def invoke(*args):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("args,message", [
    ((), "Missing option '--url'"),
    (("--url", "http://x", "--rate", "0"), "--rate"),
    (("--url", "localhost:8000", "--rate", "1"), "must start with http://"),
    (("--url", "http://x", "--trace", "poisson"), "needs an arrival rate"),
    (("--url", "http://x", "--trace", "gamma:2"), "needs an arrival rate"),
    (("--url", "http://x", "--rate", "1", "--num-requests", "5", "--duration", "3"), "not both"),
    (("--url", "http://x", "--rate", "1", "--num-requests", "0"), "--num-requests"),
    (("--url", "http://x", "--rate", "1", "--model", "a", "--model-from-dataset"), "--model or --model-from-dataset"),
    (("--url", "http://x", "--rate", "1", "--endpoint", "embeddings"), "'embeddings' is not one of"),
    (("--url", "http://x", "--rate", "1", "--concurrency", "0"), "--concurrency"),
    (("--url", "http://x", "--rate", "1", "--timeout", "-1"), "--timeout"),
    (("--url", "http://x", "--rate", "1", "--dataset", "no-such-dataset"), "no-such-dataset"),
    (("--url", "http://x", "--rate", "1", "--trace", "no-such-trace.csv"), "no-such-trace.csv"),
    (("--url", "http://x", "--load", "0.9"), "--load"),
    (("--url", "http://x", "--workload", "missing.parquet"), "missing.parquet"),
    (("--url", "http://x", "--rate", "1", "--temperature", "2.01"), "--temperature"),
    (("--url", "http://x", "--rate", "1", "--temperature", "-1"), "--temperature"),
    (("--url", "http://x", "--rate", "1", "--temperature", "hot"), "--temperature"),
])
def test_run_rejects_bad_arguments(args, message):
    result = invoke("run", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_run_rejects_workload_file_with_workload_flags(workload_file):
    result = invoke("run", "--url", "http://x", "--workload", workload_file, "--rate", "3", "--trace", "poisson")
    assert result.exit_code == 2
    assert "drop --trace, --rate" in result.output


def test_report_and_compare_reject_bad_arguments(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("report", str(tmp_path / "nope")).exit_code == 2
    result = invoke("report", str(empty))
    assert result.exit_code == 2 and "records.parquet" in result.output
    result = invoke("compare", str(empty))
    assert result.exit_code == 2 and "at least two" in result.output
    assert invoke("compare").exit_code == 2
