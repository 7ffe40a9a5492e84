"""The replay engine on a virtual clock: exact lengths, per-iteration cost, batching modes, cancellation."""

import asyncio

import pytest

from deployments.engines.base import FinishReason, GenerationRequest
from deployments.engines.replay import InjectedFault, ReplayEngine, parse_faults


class VirtualTime:
    """A clock that sleeping advances: the engine's emulated time, measured exactly."""

    def __init__(self):
        self.now = 0.0

    def clock(self):
        return self.now

    async def sleep(self, dt):
        for _ in range(3):  # let consumers read what the last iteration produced, at its time
            await asyncio.sleep(0)
        self.now += max(0.0, dt)


class Profile:
    """1 s per iteration, plus 0.01 s per prefill token and 0.5 s per extra sequence in the batch."""

    def iteration_time_s(self, num_prefill_tokens, batch_size, num_context_tokens):
        return 1.0 + 0.01 * num_prefill_tokens + 0.5 * max(0, batch_size - 1)


def engine(batching="continuous", max_batch=4, time_scale=1.0, t=None):
    t = t or VirtualTime()
    return ReplayEngine(Profile(), batching, max_batch, time_scale, static_batch_wait_s=0.0,
                        clock=t.clock, sleep=t.sleep), t


def req(rid, replay, max_tokens=100, prompt_tokens=0):
    return GenerationRequest(rid, "p", max_tokens, num_prompt_tokens=prompt_tokens, replay_output_tokens=replay)


async def run(eng, r, t, log):
    n = 0
    async for d in eng.generate(r):
        n += d.num_tokens
        log.append((t.now, r.request_id, d.num_tokens, d.finish_reason))
        last = d
    return n, last.finish_reason, t.now


@pytest.mark.parametrize("replay, max_tokens, want, reason", [
    (5, 100, 5, FinishReason.STOP), (500, 100, 100, FinishReason.LENGTH), (None, 7, 7, FinishReason.LENGTH),
    (0, 10, 0, FinishReason.STOP),
])
async def test_emits_exactly_the_replay_length(replay, max_tokens, want, reason):
    eng, t = engine()
    n, finish, _ = await run(eng, req("a", replay, max_tokens), t, [])
    assert (n, finish) == (want, reason)


async def test_one_request_costs_its_iterations():
    eng, t = engine("none")
    _, _, end = await run(eng, req("a", 10, prompt_tokens=100), t, [])
    assert end == pytest.approx(10 * 1.0 + 0.01 * 100)  # prefill rides on the first iteration
    eng2, t2 = engine("none", time_scale=0.25)
    _, _, end2 = await run(eng2, req("a", 10, prompt_tokens=100), t2, [])
    assert end2 == pytest.approx(end * 0.25)


async def test_a_request_after_an_idle_spell_starts_when_it_arrives():
    # The engine's schedule tolerates late wake-ups by catching up; an idle engine has nothing to
    # catch up on, however short the idle spell.
    eng, t = engine("none")
    _, _, end_a = await run(eng, req("a", 4), t, [])
    t.now += 0.02
    _, _, end_b = await run(eng, req("b", 1), t, [])
    assert end_a == pytest.approx(4.0) and end_b == pytest.approx(4.02 + 1.0)


async def test_none_runs_one_at_a_time_continuous_overlaps():
    eng, t = engine("none")
    log = []
    (_, _, end_a), (_, _, end_b) = await asyncio.gather(run(eng, req("a", 4), t, log), run(eng, req("b", 4), t, log))
    first_b = min(at for at, rid, *_ in log if rid == "b")
    assert end_a == pytest.approx(4.0) and first_b > end_a and end_b == pytest.approx(8.0)

    eng, t = engine("continuous", max_batch=2)
    (_, _, end_a), (_, _, end_b) = await asyncio.gather(run(eng, req("a", 4), t, []), run(eng, req("b", 4), t, []))
    assert end_a == end_b == pytest.approx(4 * 1.5)  # one shared iteration per token, batch of two


async def test_continuous_slot_frees_when_its_request_ends():
    eng, t = engine("continuous", max_batch=2)
    log = []
    await asyncio.gather(run(eng, req("short", 2), t, log), run(eng, req("long", 6), t, log),
                         run(eng, req("late", 2), t, log))
    start_late = min(at for at, rid, *_ in log if rid == "late")
    end_short = max(at for at, rid, *_ in log if rid == "short")
    end_long = max(at for at, rid, *_ in log if rid == "long")
    assert end_short < start_late < end_long  # joined the running batch at once


async def test_static_batch_holds_its_slots_until_the_longest_ends():
    eng, t = engine("static", max_batch=2)
    log = []
    await asyncio.gather(run(eng, req("short", 2), t, log), run(eng, req("long", 6), t, log),
                         run(eng, req("late", 2), t, log))
    start_late = min(at for at, rid, *_ in log if rid == "late")
    end_short = max(at for at, rid, *_ in log if rid == "short")
    end_long = max(at for at, rid, *_ in log if rid == "long")
    assert end_short < end_long < start_late
    assert end_long == pytest.approx(6 * 1.5)  # the finished row still occupies the padded batch


async def test_cancelling_frees_the_engine():
    eng, t = engine("none")
    gen = eng.generate(req("a", 10_000))
    await gen.__anext__()
    await gen.aclose()
    n, finish, _ = await asyncio.wait_for(run(eng, req("b", 3), t, []), timeout=5)
    assert (n, finish) == (3, FinishReason.STOP)
    assert eng.num_iterations < 10


# ---- fault drills (llm.replay_faults) ----------------------------------------------------------
class _FastProfile:
    def iteration_time_s(self, num_prefill_tokens, batch_size, num_context_tokens):
        return 0.001


def _faulty(rid, prompt, tokens):
    return GenerationRequest(rid, prompt, 16, replay_output_tokens=tokens)


def test_replay_fault_markers_are_read_only_when_asked_for():
    assert parse_faults("a [[replay:stall:4]] b [[replay:fail:2]] [[replay:stall:9]]") == {"stall": 4, "fail": 2}
    assert parse_faults("no markers [[predict:5]]") == {}


async def test_the_replay_engine_ignores_fault_markers_unless_enabled():
    engine = ReplayEngine(_FastProfile(), "continuous", 2)  # faults off (the default)
    deltas = [d async for d in engine.generate(_faulty("r", "[[replay:fail:0]]", 2))]
    assert sum(d.num_tokens for d in deltas) == 2


async def test_a_stalled_replay_request_holds_its_slot_and_others_still_run():
    engine = ReplayEngine(_FastProfile(), "continuous", 2, faults=True)
    stuck = engine.generate(_faulty("stuck", "[[replay:stall:1]]", 5))
    first = await stuck.__anext__()
    assert first.num_tokens == 1
    deltas = [d async for d in engine.generate(_faulty("other", "p", 3))]
    assert sum(d.num_tokens for d in deltas) == 3
    for _ in range(20):  # more iterations run; nothing more comes for the stuck one
        await asyncio.sleep(0.002)
    assert engine.num_iterations >= 4
    (seq,) = engine._running  # still in its slot
    assert seq.req.request_id == "stuck" and seq.emitted == 1 and seq.queue.empty()
    await stuck.aclose()


async def test_a_failing_replay_request_raises_and_leaves_its_slot():
    engine = ReplayEngine(_FastProfile(), "continuous", 2, faults=True)
    got = []
    with pytest.raises(InjectedFault, match="after 2 tokens"):
        async for d in engine.generate(_faulty("bad", "[[replay:fail:2]]", 5)):
            got.append(d.num_tokens)
    assert sum(got) == 2
    deltas = [d async for d in engine.generate(_faulty("next", "p", 3))]
    assert sum(d.num_tokens for d in deltas) == 3
    assert "bad" not in [s.req.request_id for s in engine._running]  # it left at the boundary after its failure


async def test_a_preempted_request_resumes_where_it_stopped_and_pays_its_re_prefill():
    """srpt: the replica closes a run after some tokens; resumed with resume_tokens = N it emits the
    rest of its length, its words go on the same sequence, and its first iteration prefills its
    prompt plus the N tokens (their KV cache was dropped), the simulator's resume cost."""
    eng, t = engine("none")
    whole = [d async for d in eng.generate(req("ref", 8, prompt_tokens=10))]
    reference = "".join(d.text for d in whole)

    first = eng.generate(req("a", 8, prompt_tokens=10))
    got = []
    async for d in first:
        got.append(d)
        if sum(x.num_tokens for x in got) == 3:
            break
    await first.aclose()  # what the replica does when the router preempts the run
    start = t.now
    resumed = GenerationRequest("a", "p", 100, num_prompt_tokens=10, replay_output_tokens=8, resume_tokens=3,
                                resume_text="".join(d.text for d in got))
    rest = [d async for d in eng.generate(resumed)]
    assert sum(d.num_tokens for d in rest) == 5 and rest[-1].finish_reason is FinishReason.STOP
    assert "".join(d.text for d in got + rest) == reference  # no word repeated or lost
    # First iteration prefills 10 + 3 tokens (1 + 0.13 s), then 4 plain ones; at most one more
    # iteration for the closed run to leave at its boundary.
    elapsed = t.now - start
    assert 5.13 - 1e-9 <= elapsed <= 6.13 + 1e-9


def test_resume_fields_are_checked():
    with pytest.raises(ValueError, match="resume_tokens"):
        GenerationRequest("a", "p", 5, resume_tokens=5)
    with pytest.raises(ValueError, match="resume_token_ids"):
        GenerationRequest("a", "p", 5, resume_tokens=2, resume_token_ids=(1,))
