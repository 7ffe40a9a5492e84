"""The replica's re-prediction of a running request's remaining length (srpt): when it reports
(progress points every K tokens of the whole reply) and which re-prediction it sends."""

from deployments.engines.base import GenerationRequest
from deployments.repredict import EMULATED, MODEL, PROMPT_MINUS_DONE, ProgressPoints, Repredictor
from tests.factories import create_meta


def test_progress_points_fire_once_per_point_passed_and_count_the_whole_reply():
    points = ProgressPoints(4)
    assert [t for t in range(1, 14) if points.due(t)] == [4, 8, 12]
    coalesced = ProgressPoints(4)
    assert [t for t in (3, 9, 10, 12) if coalesced.due(t)] == [9, 12]  # 4 and 8 passed in one delta
    resumed = ProgressPoints(4, tokens_done=6)  # a resumed run: its next point is 8
    assert [t for t in range(7, 13) if resumed.due(t)] == [8, 12]


def req(**kw):
    return GenerationRequest("r", "p", 100, meta=create_meta("r", 50.0, 0.0, max_tokens=100), **kw)


async def test_emulated_values_are_taken_at_the_latest_point_passed_then_the_fallback():
    rep = Repredictor(4)
    r = req(replay_remaining_predictions=(40.0, 30.0))
    assert await rep.remaining(r, 4, "") == 40.0
    assert await rep.remaining(r, 11, "") == 30.0  # point 8 was the latest passed
    assert rep.kind_for(r, 12) == PROMPT_MINUS_DONE  # past the values given
    assert await rep.remaining(r, 12, "") == 38.0  # 50 predicted - 12 done
    assert await rep.remaining(req(), 60, "") == 0.0  # past its prediction: nothing left, never below 0
    assert rep.counts == {EMULATED: 2, MODEL: 0, PROMPT_MINUS_DONE: 2}


class FakeModel:
    tail_tokens = 2

    def __init__(self):
        self.calls = []

    def predict(self, prompts, tails, ks):
        self.calls.append((prompts, tails, ks))
        return [17.5], [0.1]


class FakeTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "|".join(map(str, ids))


async def test_a_remaining_length_model_reads_the_proxy_text_the_reply_tail_and_k():
    model = FakeModel()
    rep = Repredictor(4, model, FakeTokenizer())
    r = req(proxy_text="user: hi")
    assert await rep.remaining(r, 8, "a reply so far", (5, 6, 7, 8, 9, 10, 11, 12)) == 17.5
    assert model.calls == [(["user: hi"], ["11|12"], [8])]  # the last tail_tokens ids, decoded
    assert await rep.remaining(r, 8, "abcdefghijk", None) == 17.5
    assert model.calls[-1][1] == ["defghijk"]  # no ids: the last 4 characters a token
    assert rep.kind_for(req(), 8) == PROMPT_MINUS_DONE  # no proxy text sent: the fallback
