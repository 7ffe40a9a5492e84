"""The simulator under srpt: progress points, preemption and resume, checked against a token-by-token
reference, against conservation of tokens and engine time, and on workloads where preemption pays."""

import math

import numpy as np
import pytest

from loadgen.repredict_sim import RepredictorSpec, remaining_predictions
from loadgen.simulator import SimWorkload, simulate
from router import Preemption, RequestMeta, Scheduler, SchedulerConfig
from router.cost_model import EngineProfile


def srpt_config(**kw) -> SchedulerConfig:
    config = dict(policy="srpt", batching="none", repredict_every_tokens=8, preempt_margin=1.5, max_preemptions=3,
                  preempt_min_remaining_tokens=4, srpt_aging_threshold_s=math.inf)
    config.update(kw)
    return SchedulerConfig(**config)


def reference(work: SimWorkload, config: SchedulerConfig, engine: EngineProfile, R: int, repredictor) -> np.ndarray:
    """Step every iteration of every replica (slow, obviously right); returns finish times. A member
    reaching a multiple of K tokens reports progress; a preempted one leaves with its tokens and later
    rejoins prefilling its prompt plus those tokens."""
    n = len(work)
    now = [0.0]
    sched = Scheduler(config, clock=lambda: now[0])
    index = {rid: i for i, rid in enumerate(work.request_id)}
    out, prompt = work.output_tokens.tolist(), work.num_prompt_tokens.tolist()
    every = config.repredict_every_tokens
    cps = remaining_predictions(out, every, repredictor, config.seed)
    for r in range(R):
        sched.add_replica(f"r{r}")
    tokens = [0] * n  # generated so far, across runs
    members = [set() for _ in range(R)]
    joining = [[] for _ in range(R)]
    current = [None] * R  # (start, end, prefilling set) of the running iteration
    finished = np.full(n, np.nan)

    def begin(r, t):
        pre = set(joining[r])
        members[r] |= pre
        joining[r] = []
        if not members[r]:
            current[r] = None
            return
        p = sum(prompt[j] + tokens[j] for j in pre)
        ctx = sum(prompt[j] + tokens[j] for j in members[r] - pre)
        current[r] = (t, t + engine.iteration_time_s(p, len(members[r]), ctx), pre)

    def assign(decisions, t):
        for d in decisions:
            j, r = index[d.request_id], int(d.replica_id[1:])
            assert type(d) is not Preemption  # only at a member's own progress point, handled below
            if current[r] is None:
                joining[r].append(j)
                begin(r, t)
            elif current[r][0] == t:
                joining[r].append(j)  # the iteration starts right now: join it
                for m in current[r][2]:
                    joining[r].append(m)
                    members[r].discard(m)
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
                tokens[j] += 1
            got = []
            for j in sorted(j for j in members[r] if tokens[j] >= out[j]):
                members[r].discard(j)
                finished[j] = t_end
                got += sched.complete(work.request_id[j], out[j])
            for j in sorted(j for j in members[r] if tokens[j] % every == 0):
                d = sched.progress(work.request_id[j], tokens[j], cps.of(j)[tokens[j] // every - 1])
                if d and type(d[0]) is Preemption:
                    assert d[0].request_id == work.request_id[j]
                    members[r].discard(j)
                    d = d[1:]
                got += d
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
    assert tokens == out
    return finished


def random_work(n=250, seed=7, horizon=25.0):
    rng = np.random.default_rng(seed)
    out = rng.integers(1, 120, n)
    arrivals = np.sort(rng.uniform(0, horizon, n))
    arrivals[10:14] = arrivals[10]  # simultaneous arrivals
    return SimWorkload.synthetic(arrivals, out, num_prompt_tokens=rng.integers(0, 800, n),
                                 predicted_tokens=out * rng.lognormal(0, 0.8, n), max_tokens=4096)


@pytest.mark.parametrize("batching", ["none", "continuous"])
@pytest.mark.parametrize("balancer", ["least-work", "late-binding"])
def test_event_driven_srpt_equals_token_by_token_reference(batching, balancer):
    work = random_work()
    config = srpt_config(batching=batching, max_batch=4, balancer=balancer)
    engine = EngineProfile.default()
    spec = RepredictorSpec.parse("noisy:0.5")
    expected = reference(work, config, engine, 3, spec)
    got = simulate(work, config, engine, 3, repredictor=spec)
    assert got.extra["num_preemptions"].sum() > 10  # the check means something
    np.testing.assert_allclose(got.finished_at, expected, rtol=1e-9, atol=1e-9)
    assert np.all(got.started_at >= got.dispatched_at) and np.all(got.dispatched_at >= got.arrival_at)
    assert np.all(got.first_token_at > got.started_at) and np.all(got.finished_at >= got.last_token_at)


def test_a_preempted_request_generates_each_token_once_and_pays_its_re_prefill():
    # One replica, everything queued at t = 0: the replica never idles, so the makespan is the sum of
    # the requests' times alone plus what their resumes cost (the re-prefill of prompt + generated
    # tokens, less the decode iteration it replaces). A lost or repeated token would show.
    rng = np.random.default_rng(3)
    n = 60
    out = rng.integers(20, 300, n)
    prompt = rng.integers(10, 500, n)
    work = SimWorkload.synthetic(np.zeros(n), out, num_prompt_tokens=prompt,
                                 predicted_tokens=out * rng.lognormal(0, 1.0, n), max_tokens=4096)
    engine = EngineProfile.default()
    res = simulate(work, srpt_config(repredict_every_tokens=16), engine, 1, repredictor="noisy:0.4")
    num = res.extra["num_preemptions"]
    assert num.sum() >= 10 and num.max() <= 3
    alone = sum(engine.request_time_s(int(p), int(o)) for p, o in zip(prompt, out, strict=True))
    assert res.extra["resume_s"].sum() > 0
    assert res.finished_at.max() == pytest.approx(alone + res.extra["resume_s"].sum(), rel=1e-12)
    # with the KV cache kept where it was, a resume costs nothing
    kept = simulate(work, srpt_config(repredict_every_tokens=16), engine, 1, repredictor="noisy:0.4",
                    resume_keeps_kv=True)
    assert kept.extra["num_preemptions"].sum() == num.sum() and kept.extra["resume_s"].sum() == 0
    assert kept.finished_at.max() == pytest.approx(alone, rel=1e-12)


def test_a_long_request_mispredicted_short_is_preempted_for_the_short_ones_behind_it():
    # "long" looks short (predicted 50) but needs 2,000 tokens; 20 short requests arrive a second
    # later. SSJF lets them wait for all of it; srpt re-predicts at its first progress point and
    # lets them pass. Each runs alone at 10 ms a token.
    out = [2000] + [20] * 20
    work = SimWorkload.synthetic([0.0] + [1.0] * 20, out, predicted_tokens=[50.0] + [20.0] * 20, max_tokens=4096)
    engine = EngineProfile.proportional(0.01)
    ssjf = simulate(work, SchedulerConfig(policy="ssjf"), engine, 1)
    srpt = simulate(work, srpt_config(repredict_every_tokens=32), engine, 1, repredictor="oracle")
    assert srpt.extra["num_preemptions"].tolist() == [1] + [0] * 20
    assert ssjf.finished_at[0] == pytest.approx(20.0) and srpt.finished_at[0] == pytest.approx(24.0)
    # preempted at its first progress point after they arrived (128 tokens, t = 1.28 s): they run
    # one after another, 0.2 s each; under ssjf they start only at 20 s
    np.testing.assert_allclose(np.sort(srpt.finished_at[1:]), 1.28 + 0.2 * np.arange(1, 21))
    np.testing.assert_allclose(np.sort(ssjf.finished_at[1:]), 20.0 + 0.2 * np.arange(1, 21))
    assert srpt.jct_s.mean() < 0.25 * ssjf.jct_s.mean()
    # the first run's times are kept: it started at 0 and its first token came then
    assert srpt.started_at[0] == 0.0 and srpt.first_token_at[0] == pytest.approx(0.01)


def test_srpt_beats_ssjf_when_lengths_are_heavy_tailed_and_predictions_noisy():
    rng = np.random.default_rng(11)
    n = 3000
    out = np.minimum(rng.lognormal(4.5, 1.2, n).astype(int) + 1, 4000)
    service = 0.01 * out.mean()
    arrivals = np.cumsum(rng.exponential(service / 0.9, n))  # one replica at load 0.9
    from loadgen.predictors_sim import noisy_predictions

    work = SimWorkload.synthetic(arrivals, out, predicted_tokens=noisy_predictions(out, 0.5, 0), max_tokens=4096)
    engine = EngineProfile.proportional(0.01)
    ssjf = simulate(work, SchedulerConfig(policy="ssjf"), engine, 1)
    srpt = simulate(work, srpt_config(repredict_every_tokens=32, preempt_margin=2.0, max_preemptions=2,
                                      preempt_min_remaining_tokens=32), engine, 1, repredictor="noisy:0.5")
    assert srpt.jct_s.mean() < 0.9 * ssjf.jct_s.mean()


def test_srpt_without_progress_points_is_ssjf_and_without_preemptions_to_spend_never_preempts():
    work = random_work(400, seed=5, horizon=20.0)
    engine = EngineProfile.default()
    for batching in ("none", "continuous"):
        ssjf = simulate(work, SchedulerConfig(policy="ssjf", batching=batching, max_batch=4), engine, 3)
        srpt = simulate(work, srpt_config(batching=batching, max_batch=4, repredict_every_tokens=0), engine, 3)
        assert srpt.extra["num_preemptions"].sum() == 0
        np.testing.assert_allclose(srpt.finished_at, ssjf.finished_at, rtol=1e-12)
        # re-predictions still inform the least-work balancer, so the order may differ from ssjf's
        never = simulate(work, srpt_config(batching=batching, max_batch=4, max_preemptions=0), engine, 3)
        assert never.extra["num_preemptions"].sum() == 0 and np.all(np.isfinite(never.finished_at))
