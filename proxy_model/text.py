"""What the proxy reads: one string per request, built by one documented rule (pure Python).

Rule (``render_messages``), shared by ``proxy-model prepare``, the serving cluster and the
simulator so that training and serving see the same text:

1. The last user turn is kept whole (it says what the reply must do).
2. Earlier turns are rendered as ``"<role>: <text>"`` lines, oldest first, and cut from the LEFT
   to at most ``max_history_chars`` characters (the oldest text goes first: recent turns say more
   about the next reply).
3. The result is ``history + "\n\n" + "user: " + last turn`` when there is history, else just the
   last turn's text (so a single-turn prompt is the plain prompt).

The encoder then takes at most ``max_length`` tokens: the first ``max_length // 2`` and the rest
from the end (``head_tail_ids``), because instructions sit at the start of a prompt ("Summarise
the following ...") as often as at its end ("... Explain this code.").
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_MAX_HISTORY_CHARS = 1000
HISTORY_MARK = "..."


def render_messages(messages: Sequence[dict], max_history_chars: int = DEFAULT_MAX_HISTORY_CHARS) -> str:
    """The proxy's input text for a conversation whose last message is the user's turn."""
    if max_history_chars < 0:
        raise ValueError(f"max_history_chars must be >= 0, got {max_history_chars}")
    if not messages:
        raise ValueError("messages is empty: need at least one user turn")
    last = messages[-1]
    if not isinstance(last, dict) or "content" not in last:
        raise ValueError(f"each message needs 'role' and 'content', got {last!r}")
    if last.get("role", "user") != "user":
        raise ValueError(f"the last message must be the user's turn, got role {last.get('role')!r}")
    text = str(last["content"] or "")
    if len(messages) == 1 or max_history_chars == 0:
        return text
    history = "\n".join(f"{m.get('role', 'user')}: {m.get('content') or ''}" for m in messages[:-1])
    if len(history) > max_history_chars:
        history = HISTORY_MARK + history[len(history) - max_history_chars:]
    return f"{history}\n\nuser: {text}"


def head_tail_ids(ids: list[int], budget: int) -> list[int]:
    """At most ``budget`` ids: the first ``budget // 2`` and the last ``budget - budget // 2``."""
    if budget <= 0:
        return []
    if len(ids) <= budget:
        return ids
    head = budget // 2
    return ids[:head] + ids[len(ids) - (budget - head):]


def head_tail_chars(text: str, max_chars: int) -> str:
    """Cheap pre-cut before tokenizing very long prompts (keeps the tokenizer's cost bounded)."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 2
    return text[:head] + " " + text[len(text) - (max_chars - head):]


def approx_tokens(text: str) -> int:
    """Rough token count without a tokenizer: ~4 characters per token for English text."""
    return (len(text) + 3) // 4
