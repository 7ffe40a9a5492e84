"""The batching rules: slots per mode, and a segment's cost stepped and in closed form."""

import pytest

from router.batching import BatchingMode, Segment, free_slots, keeps_finished, num_slots
from router.cost_model import EngineProfile


@pytest.mark.parametrize("mode, max_batch, running, slots, free", [
    ("none", 8, 0, 1, 1), ("none", 8, 1, 1, 0),
    ("static", 4, 0, 4, 4), ("static", 4, 1, 4, 0), ("static", 4, 3, 4, 0),
    ("continuous", 4, 0, 4, 4), ("continuous", 4, 3, 4, 1), ("continuous", 4, 4, 4, 0),
])
def test_slots_by_mode(mode, max_batch, running, slots, free):
    m = BatchingMode.parse(mode)
    assert num_slots(m, max_batch) == slots
    assert free_slots(m, slots, running) == free
    assert keeps_finished(m) is (m is BatchingMode.STATIC)


def test_stepping_a_segment_adds_up_to_its_closed_form():
    profile = EngineProfile.default()
    seg = Segment(prefill_tokens=700, batch_size=3, context_tokens=1200)
    steps = [seg.iteration_s(profile, i) for i in range(50)]
    assert steps[0] == profile.iteration_time_s(700, 3, 1200)
    assert steps[5] == profile.iteration_time_s(0, 3, 1200 + 700 + 5 * 3)
    for k in (1, 2, 17, 50):
        assert sum(steps[:k]) == pytest.approx(seg.span_s(profile, k), rel=1e-12)
    elapsed = sum(steps[:17]) - 1e-6
    assert seg.iterations_done(profile, elapsed) == 17


def test_next_segment_keeps_the_kv_of_who_stays():
    # 3 members (prompts 100, 200, 400) join an idle replica and run 5 iterations; the one with the
    # 200-token prompt leaves (KV: 200 + 5) and a newcomer with a 50-token prompt joins.
    seg = Segment().next(0, joined=3, joined_prompt=700)
    assert seg == Segment(700, 3, 0)
    after = seg.next(5, left=1, left_kv=205, joined=1, joined_prompt=50)
    assert after == Segment(50, 3, 100 + 5 + 400 + 5)
    # everyone leaves: nothing is cached; a newcomer at the very start shares the first iteration
    assert after.next(2, left=3, left_kv=after.kv_tokens(2)) == Segment(0, 0, 0)
    assert after.next(0, joined=1, joined_prompt=10) == Segment(60, 4, 510)
    with pytest.raises(ValueError, match="before its first iteration"):
        after.next(0, left=1, left_kv=105)
