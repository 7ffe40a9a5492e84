"""The load client's event-stream line splitter (``loadgen.client.sse_lines``): lines end at CRLF,
LF or CR, wherever the chunks break, and nowhere else; a U+2028 inside a data line's JSON (a server
writing ensure_ascii=False) no longer cuts the event in two."""

import json

from loadgen.client import sse_lines
from tests.unit.loadgen.test_client_stream import DONE, chat_chunk, send

ODD = "a\u2028b\u2029c\x85d"


async def lines_of(*chunks: str) -> list[str]:
    async def source():
        for chunk in chunks:
            yield chunk

    return [line async for line in sse_lines(source())]


async def test_lines_end_only_where_sse_says():
    assert await lines_of(f"data: {ODD}\n\n") == [f"data: {ODD}", ""]
    assert await lines_of("a\r", "\nb\rc\r\n", "d") == ["a", "b", "c", "d"]  # a CRLF split over chunks is one end
    assert await lines_of("a\r") == ["a"]
    assert await lines_of("da", "ta: x", "\n") == ["data: x"]
    assert await lines_of("") == []


async def test_a_stream_with_raw_line_separators_in_its_json_is_read_whole():
    chunk = "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": ODD}, "finish_reason": None}]},
                                  ensure_ascii=False) + "\r\n\r\n"
    rec = await send([(0.1, chunk), (0.1, chat_chunk(None, finish="stop")), (0.0, DONE)])
    assert rec.status == "ok", rec.error
    assert rec.num_chunks == 1 and rec.num_output_chars == len(ODD)
