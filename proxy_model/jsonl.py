"""JSON lines split the way the format defines them: at "\n" only.

``str.splitlines`` also splits at U+2028, U+2029, U+0085 and a few control characters, which JSON
allows raw inside a string (``json.dumps(..., ensure_ascii=False)`` writes them so): a record
holding one would be cut in two. Reading files line by line in text mode is fine (it splits at
"\n", "\r" and "\r\n" only, and a raw "\r" cannot appear inside a JSON string).
"""

from __future__ import annotations

from collections.abc import Iterator


def json_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for each line of ``text`` that is not blank; a "\r" before the "\n"
    stays on the line (JSON takes it as whitespace)."""
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, line
