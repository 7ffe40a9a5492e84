"""The per-request record: one class, whose fields are the columns of records.parquet."""

import dataclasses

from loadgen.client import RecordStatus, RequestRecord
from loadgen.results import RECORD_SCHEMA, read_records, records_table, write_results


def _filled_record() -> RequestRecord:
    # Every field set to a value of its annotated type, so a column of the wrong type would show.
    return RequestRecord(
        request_id="r1", prompt_id="p1", model="m", status=RecordStatus.OK.value, error=None, http_status=200,
        finish_reason="length", scheduled_at=0.5, sent_at=0.75, first_token_at=1.25, last_token_at=2.5,
        done_at=2.75, send_lag_s=0.25, ttft_s=0.5, tpot_s=0.125, max_gap_s=0.375, jct_s=2.0,
        num_output_tokens=11, num_chunks=10, num_output_chars=42, num_prompt_tokens=7, expected_output_tokens=12)


def test_a_record_round_trips_through_records_parquet(tmp_path):
    rec = _filled_record()
    assert RECORD_SCHEMA.names == [f.name for f in dataclasses.fields(RequestRecord)]
    write_results(tmp_path, [rec], {"label": "x"}, {})
    (row,) = read_records(tmp_path).to_pylist()
    assert row == rec.to_dict()


def test_dict_records_and_record_objects_give_one_table():
    rec = _filled_record()
    assert records_table([rec]).equals(records_table([rec.to_dict()]))
