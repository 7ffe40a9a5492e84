"""The proxy text rule (``proxy_text``) and the encoder's head + tail cut."""

from types import SimpleNamespace

import pytest

from proxy_model.text import head_tail_ids, proxy_text


def test_keeps_the_last_user_turn_and_cuts_history_from_the_left():
    msgs = [{"role": "user", "content": "A" * 50}, {"role": "assistant", "content": "B" * 50},
            {"role": "user", "content": "final question"}]
    text = proxy_text(msgs, max_history_chars=30)
    assert text.endswith("\n\nuser: final question")
    assert "A" not in text  # the oldest turn went first
    assert text == "..." + "B" * 30 + "\n\nuser: final question"
    assert proxy_text(msgs, max_history_chars=0) == "final question"


def test_single_turn_and_prompt_strings_are_the_plain_text():
    assert proxy_text([{"role": "user", "content": "hi"}]) == "hi"
    assert proxy_text("a completion prompt") == "a completion prompt"


def test_messages_after_the_last_user_turn_are_left_out():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "partial answer"}]
    assert proxy_text(msgs) == "system: be brief\n\nuser: q"
    assert proxy_text([{"role": "system", "content": "only this"}]) == "only this"  # no user turn: the last message


def test_message_objects_read_like_mappings():
    as_objects = [SimpleNamespace(role="system", content="s"), SimpleNamespace(role="user", content="q")]
    assert proxy_text(as_objects) == proxy_text([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}])


def test_bad_conversations_raise():
    with pytest.raises(ValueError, match="no message"):
        proxy_text([])
    with pytest.raises(ValueError, match="'role' and 'content'"):
        proxy_text([{"role": "user"}])
    with pytest.raises(ValueError, match=">= 0"):
        proxy_text([{"role": "user", "content": "q"}], max_history_chars=-1)


def test_head_tail_ids_keeps_both_ends():
    assert head_tail_ids(list(range(10)), 4) == [0, 1, 8, 9]
    assert head_tail_ids([1, 2], 4) == [1, 2]
