"""What crosses between the ingress and a replica (GenerationRequest, Started, Misrouted, Delta with
its FinishReason), DeltaStream's finish reasons, and the replica's stall watchdog."""

import asyncio
import dataclasses
import pickle

import pytest

from deployments.engines.base import (
    Delta,
    DeltaStream,
    EngineStalled,
    FinishReason,
    GenerationRequest,
    Misrouted,
    StallWatchdog,
    Started,
)

EOS = 0


@pytest.mark.parametrize("message", [
    GenerationRequest("r1", "hello", 16, num_prompt_tokens=2, prompt_token_ids=(5, 6), temperature=0.0, seed=3,
                      replay_output_tokens=4, batch_id=1),
    Started("replica-a"), Misrouted("replica-b"), Delta("hi", 2), Delta("!", 1, FinishReason.LENGTH),
], ids=lambda m: type(m).__name__)
def test_replica_messages_survive_pickling(message):
    again = pickle.loads(pickle.dumps(message))
    assert again == message and type(again) is type(message)


def test_a_delta_is_frozen_and_its_reason_is_openais_value():
    d = Delta("x", 1, FinishReason.STOP)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.finish_reason = FinishReason.LENGTH
    assert [r.value for r in FinishReason] == ["stop", "length"]


async def _deltas(pushes, max_tokens):
    """Push token id lists (``None``: finished without a token) into a stream; collect its deltas."""
    stream = DeltaStream(asyncio.get_running_loop(), lambda ids: "".join(chr(ord("a") + i) for i in ids),
                         max_tokens)
    for ids in pushes:
        stream.push([] if ids is None else ids, finished=ids is None)
    return [d async for d in stream.deltas({EOS})]


async def test_end_of_sequence_finishes_with_stop():
    deltas = await _deltas([[1, 2], [EOS]], max_tokens=10)
    assert sum(d.num_tokens for d in deltas) == 3
    assert deltas[-1].finish_reason is FinishReason.STOP
    assert all(d.finish_reason is None for d in deltas[:-1])


async def test_max_tokens_finishes_with_length_and_drops_the_rest():
    deltas = await _deltas([[1, 2, 3, 4, 5]], max_tokens=3)
    assert deltas == [Delta("bcd", 3, FinishReason.LENGTH)]


async def test_the_engine_ending_early_is_a_stop():
    deltas = await _deltas([[1], None], max_tokens=10)
    assert deltas == [Delta("b", 1, FinishReason.STOP)]


# ---- the stall watchdog ------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_watchdog_trips_only_while_work_runs_without_output():
    clock = FakeClock()
    dog = StallWatchdog(5.0, clock=clock)
    clock.now += 60  # idle for a minute: an idle engine owes nothing
    assert dog.stalled_for() is None
    dog.begin()  # the first request after idling starts the clock afresh
    clock.now += 4
    dog.progress()
    clock.now += 5
    assert dog.stalled_for() is None  # 5 s since the last output: not past the limit yet
    clock.now += 1
    assert dog.stalled_for() == pytest.approx(6.0)
    with pytest.raises(EngineStalled, match="1 request.*6.0 s.*stall_timeout_s=5.0"):
        dog.check()
    dog.progress()  # output again: healthy
    dog.check()
    dog.end()
    clock.now += 100
    assert dog.stalled_for() is None


def test_a_request_joining_a_stuck_engine_does_not_hide_the_stall():
    clock = FakeClock()
    dog = StallWatchdog(5.0, clock=clock)
    dog.begin()
    for _ in range(4):  # new calls keep arriving at the stuck engine
        clock.now += 2
        dog.begin()
    assert dog.active == 5 and dog.stalled_for() == pytest.approx(8.0)
    for _ in range(5):
        dog.end()
    assert dog.stalled_for() is None  # every call gone (cancelled by their deadlines)


def test_the_watchdog_refuses_a_non_positive_limit():
    with pytest.raises(ValueError):
        StallWatchdog(0)
