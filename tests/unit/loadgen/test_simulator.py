"""The discrete-event simulator: queueing theory, a token-by-token reference, batching semantics."""

import math

import numpy as np
import pytest

from loadgen.simulator import SimWorkload, measure_saturation, simulate
from router import BatchingMode, RequestMeta, Scheduler, SchedulerConfig
from router.cost_model import EngineProfile


def test_mg1_fcfs_mean_wait_matches_pollaczek_khinchine():
    # M/G/1: Poisson arrivals, one replica, one request at a time, FCFS. Service time is
    # proportional to the output length (10 ms per token), lengths uniform on 1..199.
    # P-K: W = lambda E[S^2] / (2 (1 - rho)).
    n, s, rho = 20_000, 0.01, 0.7
    k = np.arange(1, 200)
    mean_s, mean_s2 = s * k.mean(), (s * k) ** 2 @ np.full(len(k), 1 / len(k))
    lam = rho / mean_s
    rng = np.random.default_rng(12345)
    out = rng.integers(1, 200, n)
    arrivals = np.concatenate(([0.0], np.cumsum(rng.exponential(1 / lam, n - 1))))
    work = SimWorkload.synthetic(arrivals, out)
    res = simulate(work, SchedulerConfig(policy="fcfs", batching="none"), EngineProfile.proportional(s), 1)
    wait = float(np.mean(res.started_at - res.arrival_at))
    pk = lam * mean_s2 / (2 * (1 - rho))
    assert wait == pytest.approx(pk, rel=0.05)
    # and the service times are exactly proportional to the lengths
    np.testing.assert_allclose(res.finished_at - res.started_at, s * out, rtol=1e-9)


# ---- a token-by-token reference ------------------------------------------------------------------

def reference(work: SimWorkload, config: SchedulerConfig, engine: EngineProfile, R: int) -> np.ndarray:
    """Step every iteration of every replica (slow, obviously right); returns finish times."""
    n = len(work)
    now = [0.0]
    sched = Scheduler(config, clock=lambda: now[0])
    index = {rid: i for i, rid in enumerate(work.request_id)}
    out, prompt = work.output_tokens.tolist(), work.num_prompt_tokens.tolist()
    static = config.batching is BatchingMode.STATIC
    for r in range(R):
        sched.add_replica(f"r{r}")
    members = [dict() for _ in range(R)]  # request -> tokens generated so far
    joining = [[] for _ in range(R)]  # join at the next iteration start
    current = [None] * R  # (start, end, prefilling set) of the running iteration
    finished = np.full(n, np.nan)

    def begin(r, t):
        pre = set(joining[r])
        for j in joining[r]:
            members[r][j] = 0
        joining[r] = []
        if not members[r]:
            current[r] = None
            return
        p = sum(prompt[j] for j in pre)
        ctx = sum(prompt[j] + g for j, g in members[r].items() if j not in pre)
        current[r] = (t, t + engine.iteration_time_s(p, len(members[r]), ctx), pre)

    def assign(assignments, t):
        for a in assignments:
            j, r = index[a.request_id], int(a.replica_id[1:])
            if current[r] is None:
                joining[r].append(j)
                begin(r, t)
            elif current[r][0] == t and not static:
                joining[r].append(j)  # the iteration starts right now: join it
                for m in current[r][2]:
                    joining[r].append(m)
                    del members[r][m]
                begin(r, t)
            else:
                joining[r].append(j)

    i = 0
    while True:
        ends = [(c[1], r) for r, c in enumerate(current) if c is not None]
        t_end, r = min(ends) if ends else (math.inf, -1)
        t_arr = work.arrival_s[i] if i < n else math.inf
        if t_end == math.inf and t_arr == math.inf:
            break
        if t_end <= t_arr:
            now[0] = t_end
            for j in members[r]:
                members[r][j] += 1
            if static:
                done = [j for j in members[r]] if max(out[j] - g for j, g in members[r].items()) <= 0 else []
            else:
                done = [j for j, g in members[r].items() if g >= out[j]]
            got = []
            for j in done:
                del members[r][j]
                finished[j] = t_end
                got += sched.complete(work.request_id[j])
            mine = [a for a in got if a.replica_id == f"r{r}"]
            for a in mine:
                joining[r].append(index[a.request_id])
            begin(r, t_end)
            assign([a for a in got if a.replica_id != f"r{r}"], t_end)
        else:
            now[0] = t_arr
            m = RequestMeta(work.request_id[i], "m", prompt[i], float(work.predicted_tokens[i]),
                            int(work.max_tokens[i]), t_arr)
            i += 1
            assign(sched.enqueue(m), t_arr)
    return finished


@pytest.mark.parametrize("batching", ["none", "static", "continuous"])
@pytest.mark.parametrize("balancer", ["least-work", "late-binding"])
def test_event_driven_simulator_equals_token_by_token_reference(batching, balancer):
    rng = np.random.default_rng(7)
    n = 250
    out = rng.integers(1, 120, n)
    arrivals = np.sort(rng.uniform(0, 25, n))
    arrivals[10:14] = arrivals[10]  # simultaneous arrivals
    work = SimWorkload.synthetic(arrivals, out, num_prompt_tokens=rng.integers(0, 800, n),
                                 predicted_tokens=out * rng.lognormal(0, 0.5, n), max_tokens=4096)
    config = SchedulerConfig(policy="ssjf", batching=batching, max_batch=4, balancer=balancer)
    engine = EngineProfile.default()
    expected = reference(work, config, engine, 3)
    got = simulate(work, config, engine, 3)
    np.testing.assert_allclose(got.finished_at, expected, rtol=1e-9, atol=1e-9)
    assert np.all(got.started_at >= got.dispatched_at) and np.all(got.dispatched_at >= got.arrival_at)
    assert np.all(got.first_token_at > got.started_at) and np.all(got.finished_at >= got.last_token_at)


def test_static_batch_returns_together_when_its_longest_member_ends():
    # The first request finds the replica idle and starts alone (no policy waits to fill a batch);
    # the next three form one batch when it ends, and all return when their longest member ends.
    work = SimWorkload.synthetic([0.0, 0.1, 0.2, 0.3], [2, 3, 10, 5])
    res = simulate(work, SchedulerConfig(policy="fcfs", batching="static", max_batch=4),
                   EngineProfile.proportional(1.0), 1)
    assert res.finished_at.tolist() == [2.0, 12.0, 12.0, 12.0]
    assert res.last_token_at.tolist() == [2.0, 5.0, 12.0, 7.0]
    assert res.started_at.tolist() == [0.0, 2.0, 2.0, 2.0]


def test_continuous_member_leaves_at_its_own_last_token_and_a_newcomer_joins_at_a_boundary():
    # 1 s per iteration; "a" (3 tokens) and "b" (5) start at 0; "c" arrives at 0.5 and waits for the
    # boundary at 1 s, since there is a free slot (max_batch 3).
    work = SimWorkload.synthetic([0.0, 0.0, 0.5], [3, 5, 2])
    res = simulate(work, SchedulerConfig(policy="fcfs", batching="continuous", max_batch=3),
                   EngineProfile.proportional(1.0), 1)
    assert res.finished_at.tolist() == [3.0, 5.0, 3.0]
    assert res.started_at.tolist() == [0.0, 0.0, 1.0]
    assert res.dispatched_at.tolist() == [0.0, 0.0, 0.5]
    assert res.first_token_at.tolist() == [1.0, 1.0, 2.0]


def test_none_runs_one_request_at_a_time_per_replica():
    work = SimWorkload.synthetic([0.0, 0.1, 0.2, 0.3], [3, 4, 1, 2])
    res = simulate(work, SchedulerConfig(policy="ssjf", batching="none"), EngineProfile.proportional(1.0), 1)
    assert res.finished_at.tolist() == [3.0, 10.0, 4.0, 6.0]  # q0 alone, then q2 (1), q3 (2), q1 (4)


def test_oracle_policy_sees_the_truth_while_ssjf_sees_only_predictions():
    work = SimWorkload.synthetic([0.0, 0.1, 0.2, 0.3], [10, 1, 50, 2], predicted_tokens=[1, 50, 2, 10])
    engine = EngineProfile.proportional(1.0)
    oracle = simulate(work, SchedulerConfig(policy="oracle", batching="none"), engine, 1)
    ssjf = simulate(work, SchedulerConfig(policy="ssjf", batching="none"), engine, 1)
    # q0 runs first in both (alone at t=0); then oracle: q1 (1), q3 (2), q2 (50); ssjf: q2, q3, q1
    assert np.argsort(oracle.started_at).tolist() == [0, 1, 3, 2]
    assert np.argsort(ssjf.started_at).tolist() == [0, 2, 3, 1]


def test_saturation_of_one_proportional_replica_is_one_over_the_mean_service_time():
    rng = np.random.default_rng(3)
    out = rng.integers(1, 100, 4000)
    work = SimWorkload.synthetic(np.zeros(len(out)), out)
    sat = measure_saturation(work, SchedulerConfig(batching="none"), EngineProfile.proportional(0.01), 2)
    assert sat["saturation_rps"] == pytest.approx(2 / (0.01 * out.mean()), rel=0.02)


def test_workload_validation_names_the_problem():
    with pytest.raises(ValueError, match="sorted"):
        SimWorkload.synthetic([1.0, 0.0], [1, 1])
    with pytest.raises(ValueError, match="max_tokens"):
        SimWorkload.synthetic([0.0], [10], max_tokens=5)
    with pytest.raises(ValueError, match=">= 1"):
        SimWorkload.synthetic([0.0], [0])
    with pytest.raises(ValueError, match="num_replicas"):
        simulate(SimWorkload.synthetic([0.0], [1]), SchedulerConfig(), EngineProfile.default(), 0)
