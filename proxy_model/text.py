"""What the proxy reads: one string per request, built by one rule (pure Python).

:func:`proxy_text` is that rule. ``proxy-model prepare`` renders the training data with it; the
serving cluster's proxy pool and the simulator render each request with it through
``proxy_model.predictor.text_for`` (which reads the history cut of the predictor's artifact), so
the model is served the very text it was trained on:

1. A prompt string (a completion request, or a row with no conversation) is the text as it is.
2. In a conversation, the turn is the last user message (messages after it, such as an assistant
   prefix, are left out; with no user message at all, the last message is the turn). Its text is
   kept whole: it says what the reply must do.
3. The messages before the turn are rendered as ``"<role>: <text>"`` lines, oldest first, and cut
   from the LEFT to at most ``max_history_chars`` characters, marked by a leading ``...`` (the
   oldest text goes first: recent turns say more about the next reply).
4. The result is ``history + "\n\n" + "<role>: " + turn`` when there is history, else just the
   turn's text (so a single-turn conversation gives the plain prompt).

``max_history_chars`` is a property of a trained proxy: ``prepare --max-history-chars`` sets it,
``train`` records it in the artifact, and serving and simulation read it back from there.

The encoder then takes at most ``max_length`` tokens: the first ``max_length // 2`` and the rest
from the end (``head_tail_ids``), because instructions sit at the start of a prompt ("Summarise
the following ...") as often as at its end ("... Explain this code.").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DEFAULT_MAX_HISTORY_CHARS = 1000
HISTORY_MARK = "..."


def _role_content(message) -> tuple[str, str]:
    """(role, text) of a message given as a mapping (datasets, JSON) or an object with attributes
    (the serving cluster's parsed messages)."""
    if isinstance(message, Mapping):
        if "content" not in message:
            raise ValueError(f"each message needs 'role' and 'content', got {message!r}")
        return str(message.get("role") or "user"), str(message.get("content") or "")
    try:
        return str(message.role or "user"), str(message.content or "")
    except AttributeError:
        raise ValueError(f"each message needs 'role' and 'content', got {message!r}") from None


def proxy_text(conversation: str | Sequence, max_history_chars: int = DEFAULT_MAX_HISTORY_CHARS) -> str:
    """The proxy's input text for one request, by the rule of this module.

    ``conversation``: a prompt string, or a non-empty sequence of messages (mappings or objects
    with ``role`` and ``content``).
    """
    if isinstance(conversation, str):
        return conversation
    if max_history_chars < 0:
        raise ValueError(f"max_history_chars must be >= 0, got {max_history_chars}")
    messages = [_role_content(m) for m in conversation]
    if not messages:
        raise ValueError("the conversation has no message: need at least one turn")
    turn = max((i for i, (role, _) in enumerate(messages) if role == "user"), default=len(messages) - 1)
    role, text = messages[turn]
    if turn == 0 or max_history_chars == 0:
        return text
    history = "\n".join(f"{r}: {t}" for r, t in messages[:turn])
    if len(history) > max_history_chars:
        history = HISTORY_MARK + history[len(history) - max_history_chars:]
    return f"{history}\n\n{role}: {text}"


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
