"""JSON lines split at "\n" only: U+2028, U+2029 and U+0085 are legal raw inside a JSON string
(``ensure_ascii=False`` writes them so), and str.splitlines would cut such a record in two."""

import gzip
import json

import pytest

from loadgen.arrivals import load_trace
from proxy_model.collect import read_done
from proxy_model.data import read_logs
from proxy_model.jsonl import json_lines

ODD = "line\u2028separator, paragraph\u2029separator, next\x85line"


def test_json_lines_keeps_unicode_line_separators_inside_a_record():
    text = json.dumps({"a": ODD}, ensure_ascii=False) + "\r\n\n  \n" + json.dumps({"b": 1}) + "\n"
    assert len(text.splitlines()) > 4  # what the readers did before
    lines = list(json_lines(text))
    assert [n for n, _ in lines] == [1, 4]  # blank lines skipped, numbers kept for error messages
    assert [json.loads(line) for _, line in lines] == [{"a": ODD}, {"b": 1}]


@pytest.mark.parametrize("compress", [False, True])
def test_the_logs_schema_reader_keeps_a_record_with_a_line_separator_whole(tmp_path, compress):
    rows = [{"model": "m", "prompt": ODD, "output_tokens": 3}, {"model": "m", "prompt": "plain", "output_tokens": 5}]
    data = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode()
    path = tmp_path / "logs.jsonl"
    path.write_bytes(gzip.compress(data) if compress else data)
    got = read_logs(path)
    assert [r["messages"][0]["content"] for r in got] == [ODD, "plain"]
    assert [r["output_tokens"] for r in got] == [3, 5]


def test_collect_resume_reads_rows_with_a_line_separator(tmp_path):
    out = tmp_path / "replies.jsonl"
    out.write_text(json.dumps({"prompt_id": "a", "model": "m", "output": ODD}, ensure_ascii=False) + "\n"
                   + json.dumps({"prompt_id": "b", "model": "m", "output": "x"}) + "\n", encoding="utf-8")
    assert read_done(out, "m") == {"a", "b"}


def test_a_mooncake_trace_with_a_line_separator_in_a_field(tmp_path):
    recs = [{"timestamp": 0, "input_length": 10, "output_length": 5, "note": ODD},
            {"timestamp": 2000, "input_length": 10, "output_length": 6}]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs), encoding="utf-8")
    trace = load_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 2.0] and trace.output_tokens.tolist() == [5, 6]
