"""Decision logic of the outstanding-work autoscaling policy (cluster/autoscaling.py)."""

from types import SimpleNamespace

import pytest

from cluster.autoscaling import (
    STATE_SIGNAL,
    STATE_WORK,
    OutstandingWorkPolicy,
    RouterWorkReader,
    WorkScalingConfig,
    desired_replicas,
    total_work,
)


class FakeReader(RouterWorkReader):
    """Scripted router answers: set(value, at) or silence()."""

    def __init__(self, config):
        super().__init__(config)
        self.polled_at = []

    def set(self, value, at):
        self.value, self.value_at = value, at

    def silence(self):
        self.value, self.value_at = None, None

    def poll(self, now):
        self.polled_at.append(now)
        return self.value, self.value_at


class FakeAutoscalingConfig:
    def __init__(self, target_ongoing_requests=2.0):
        self.target = target_ongoing_requests

    def get_target_ongoing_requests(self):
        return self.target


def ctx(now=100.0, current=2, target=2, total_requests=0.0, min_r=1, max_r=8):
    return SimpleNamespace(current_time=now, current_num_replicas=current, target_num_replicas=target,
                           total_num_requests=total_requests, capacity_adjusted_min_replicas=min_r,
                           capacity_adjusted_max_replicas=max_r, config=FakeAutoscalingConfig(),
                           deployment_name="LLM", policy_state={})


def policy(**kw):
    return OutstandingWorkPolicy(reader_factory=FakeReader, **kw)


@pytest.mark.parametrize("work, want", [(0, 1), (1, 1), (5000, 1), (5001, 2), (12_000, 3), (10**9, 8)])
def test_desired_replicas_is_ceil_of_work_over_target_within_bounds(work, want):
    assert desired_replicas(work, target_work_per_replica=5000, min_replicas=1, max_replicas=8) == want


def test_desired_replicas_rejects_negative_work():
    with pytest.raises(ValueError, match="-1"):
        desired_replicas(-1, target_work_per_replica=5000, min_replicas=1, max_replicas=8)


def test_policy_follows_router_work_when_fresh():
    p = policy(target_work_per_replica=4000, max_signal_age_s=10)
    p.reader.set(10_000, at=95.0)
    desired, state = p(ctx(now=100.0, total_requests=1))
    assert desired == 3  # ceil(10000 / 4000), although only 1 request is ongoing
    assert state == {STATE_WORK: 10_000, STATE_SIGNAL: "router"}


def test_policy_scales_down_to_min_when_router_reports_no_work():
    p = policy(target_work_per_replica=4000)
    p.reader.set(0.0, at=100.0)
    desired, _ = p(ctx(now=100.0, current=5, target=5, min_r=2))
    assert desired == 2


def test_policy_respects_capacity_adjusted_max():
    p = policy(target_work_per_replica=100)
    p.reader.set(10_000, at=100.0)
    desired, _ = p(ctx(now=100.0, max_r=4))
    assert desired == 4


def test_stale_answer_falls_back_to_ongoing_requests():
    p = policy(target_work_per_replica=4000, max_signal_age_s=10)
    p.reader.set(40_000, at=80.0)  # 20 s old
    desired, state = p(ctx(now=100.0, current=2, total_requests=6))
    assert desired == pytest.approx(3.0)  # 6 ongoing / 2 per replica, not 40000 / 4000
    assert state[STATE_SIGNAL] == "ongoing-requests"


def test_silent_router_falls_back_and_zero_replicas_keep_target():
    p = policy()
    p.reader.silence()
    desired, state = p(ctx(now=100.0, current=0, target=1, total_requests=0))
    assert desired == 1 and state[STATE_SIGNAL] == "ongoing-requests"


def test_policy_polls_with_the_context_clock():
    p = policy()
    p(ctx(now=123.0))
    p(ctx(now=124.5))
    assert p.reader.polled_at == [123.0, 124.5]


@pytest.mark.parametrize("answer, total", [
    (12.5, 12.5), (7, 7.0), ({"total": 9}, 9.0), ({"r1": 3, "r2": 4.5, "note": "x"}, 7.5),
    # A router snapshot (Scheduler.snapshot() shape): its replicas' predicted outstanding tokens.
    ({"num_queued": 3, "num_running": 2, "replicas": [{"replica_id": "a", "outstanding_work": 100.0},
                                                      {"replica_id": "b", "outstanding_work": 50.5}]}, 150.5),
])
def test_total_work_accepts_number_mapping_or_snapshot(answer, total):
    assert total_work(answer) == total


@pytest.mark.parametrize("kw, msg", [({"target_work_per_replica": 0}, "target_work_per_replica"),
                                     ({"router_name": ""}, "router_name"),
                                     ({"poll_interval_s": -1}, "poll_interval_s"),
                                     ({"max_signal_age_s": 0}, "max_signal_age_s")])
def test_config_validation_names_the_field_and_value(kw, msg):
    with pytest.raises(ValueError, match=msg):
        WorkScalingConfig(**kw)


def test_policy_kwargs_are_json_like_and_reach_the_config():
    p = OutstandingWorkPolicy(target_work_per_replica=123, router_name="r", router_namespace="ns")
    assert p.config == WorkScalingConfig(target_work_per_replica=123, router_name="r", router_namespace="ns")
    assert isinstance(p.reader, RouterWorkReader)


def test_serve_accepts_the_policy_by_import_path():
    from ray.serve.config import AutoscalingConfig

    cfg = AutoscalingConfig(min_replicas=1, max_replicas=4, policy={
        "policy_function": "cluster.autoscaling:OutstandingWorkPolicy",
        "policy_kwargs": {"target_work_per_replica": 2000}})
    cls = cfg.policy.get_policy()
    assert cls.__name__ == "OutstandingWorkPolicy"
    assert cls(**cfg.policy.policy_kwargs).config.target_work_per_replica == 2000
