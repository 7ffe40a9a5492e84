"""SchedulerConfig: validation, and the knob dataclasses derived from it."""

from dataclasses import fields

import pytest

from router.config import SchedulerConfig, scheduler_knobs


@pytest.mark.parametrize("kwargs, words", [
    ({"max_batch": 0}, ["max_batch", "0"]),
    ({"batching": "none", "max_batch": 0}, ["max_batch", "0"]),
    ({"aging_rate": -1}, ["aging_rate", "-1"]),
    ({"policy": "ssjf-aging", "aging_rule": "response-ratio", "aging_rate": 0}, ["response-ratio", "aging_rate > 0"]),
    ({"max_queued": -1}, ["max_queued", "-1"]),
    ({"balancer": "random"}, ["'random'", "least-work"]),
])
def test_bad_values_name_the_knob_and_the_value(kwargs, words):
    with pytest.raises(ValueError) as e:
        SchedulerConfig(**kwargs)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_batching_none_means_one_slot():
    assert SchedulerConfig(batching="none", max_batch=8).max_batch == 1
    assert SchedulerConfig(batching="static", max_batch=8).max_batch == 8


def test_knobs_are_the_configs_fields_as_plain_values():
    knobs = scheduler_knobs("Knobs", module=__name__, exclude=("batching", "max_batch"), defaults={"max_queued": 7})
    core = {f.name: f for f in fields(SchedulerConfig)}
    got = fields(knobs)
    assert [f.name for f in got] == [n for n in core if n not in ("batching", "max_batch")]
    for f in got:
        assert f.metadata["help"] == core[f.name].metadata["help"]
    value = knobs()
    assert value.policy == "ssjf" and value.aging_rule == "threshold" and value.max_queued == 7
    assert SchedulerConfig(**vars(value)).to_dict() == {**SchedulerConfig(max_queued=7).to_dict()}
    with pytest.raises(ValueError, match="max_batchh"):
        scheduler_knobs("Bad", module=__name__, exclude=("max_batchh",))
