"""A causal LM as the proxy's encoder: last-token states of several layers, the prompt in the model's
chat template, features standardised, several heads averaged (proxy_model.pooling, HeadEnsemble)."""

import json

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from proxy_model.cli import main  # noqa: E402
from proxy_model.config import HeadConfig, TrainConfig  # noqa: E402
from proxy_model.engine import Tokenize  # noqa: E402
from proxy_model.model import HeadEnsemble, LengthHead, LengthModel  # noqa: E402
from proxy_model.pooling import chat_affixes, default_layers, pool  # noqa: E402
from proxy_model.predictor import LengthPredictor  # noqa: E402
from proxy_model.testing import make_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def llama(llama_dir):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(llama_dir).eval(), AutoTokenizer.from_pretrained(llama_dir)


def test_default_layers_spread_up_to_the_top():
    assert default_layers(30) == [6, 12, 18, 24, 30]
    assert default_layers(2) == [1, 2]
    assert default_layers(1) == [1]


def test_chat_affixes_wrap_one_user_message_up_to_the_assistant_header(llama):
    _, tok = llama
    prefix, suffix = chat_affixes(tok)
    assert tok.decode(prefix).replace(" ", "") == "<|im_start|>user"
    assert tok.decode(suffix).replace(" ", "") == "<|im_end|><|im_start|>assistant"
    wrap = Tokenize(tok, 16, chat_template=True)
    ids = wrap(["write a long detailed essay about history science music art explain step by step"])[0]
    assert len(ids) == 16 and ids[:len(prefix)] == prefix and ids[-len(suffix):] == suffix
    with pytest.raises(ValueError, match="no room for the text"):
        Tokenize(tok, len(prefix) + len(suffix), chat_template=True)


def test_last_layers_pooling_reads_each_rows_own_last_token_whatever_the_padding(llama):
    model, tok = llama
    wrap = Tokenize(tok, 48, chat_template=True)
    seqs = wrap(["yes", "write a long detailed essay about history science music art"])
    assert len(seqs[0]) < len(seqs[1])
    batch = wrap.pad(seqs)
    with torch.inference_mode():
        both = pool(model, "last-layers", [1, 2], batch["input_ids"], batch["attention_mask"])
        alone = [pool(model, "last-layers", [1, 2], **wrap.pad([s])) for s in seqs]
        top = model(**wrap.pad([seqs[0]])).last_hidden_state[0, -1]
    assert both.shape == (2, 2 * model.config.hidden_size)
    for row, single in enumerate(alone):
        assert torch.allclose(both[row], single[0], atol=1e-5)
    # the top layer's slice is the model's own last state (the final norm included)
    assert torch.allclose(alone[0][0, model.config.hidden_size:], top, atol=1e-5)
    with pytest.raises(ValueError, match="beyond the encoder"):
        pool(model, "last-layers", [3], batch["input_ids"], batch["attention_mask"])


def _ensemble_cfg(members=3, feature_norm=True):
    return HeadConfig(head="regression", hidden_size=8, encoder_dim=4, models=["m"], members=members,
                      feature_norm=feature_norm)


def test_feature_norm_makes_the_head_blind_to_the_features_scale():
    torch.manual_seed(0)
    head = HeadEnsemble(_ensemble_cfg()).eval()
    x = torch.randn(32, 4) * torch.tensor([1.0, 100.0, 0.01, 5.0])
    head.set_feature_stats(x)
    scaled = x * 7.0 - 3.0
    out = head(x)
    head.set_feature_stats(scaled)
    assert torch.allclose(head(scaled), out, atol=1e-5)


def test_members_learn_each_on_its_own_loss_and_answer_with_their_mean():
    torch.manual_seed(0)
    model = LengthModel(None, _ensemble_cfg(members=3)).eval()  # dropout off: the calls below must agree
    feats, targets = torch.randn(6, 4), torch.randn(6, 1)
    each = model.head(feats, each=True)
    assert each.shape == (3, 6, 2, 1)
    out = model(features=feats, targets=targets)
    assert torch.allclose(out["logits"], each.mean(0))
    want = torch.stack([model.loss(e, targets) for e in each]).mean()
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    # one member, no norm: the single-head layout of every older artifact
    assert isinstance(LengthModel(None, _ensemble_cfg(members=1, feature_norm=False)).head, LengthHead)


def test_config_rejects_what_cannot_be_built():
    with pytest.raises(ValueError, match="pooling"):
        TrainConfig(pooling="max")
    with pytest.raises(ValueError, match="freeze-encoder"):
        TrainConfig(members=2)
    with pytest.raises(ValueError, match="init-from"):  # refused before any encoder is loaded
        TrainConfig(pooling="last-layers", init_from="artifacts/some-proxy")
    with pytest.raises(ValueError, match="pool_layers"):
        HeadConfig(pooling="last-layers")
    with pytest.raises(ValueError, match="members"):
        HeadConfig(members=0)
    # an artifact written before these fields existed reads as mean pooling, one head
    old = HeadConfig.from_dict({"head": "regression", "encoder_dim": 4})
    assert (old.pooling, old.members, old.chat_template, old.feature_norm) == ("mean", 1, False, False)


def test_cli_members_without_a_frozen_encoder_is_exit_2(prepared, tmp_path):
    r = CliRunner().invoke(main, ["train", str(prepared), "-o", str(tmp_path / "a"), "--members", "2"])
    assert r.exit_code == 2 and "freeze-encoder" in r.output
    r = CliRunner().invoke(main, ["train", str(prepared), "-o", str(tmp_path / "b"), "--pool-layers", "3,1"])
    assert r.exit_code == 2 and "strictly increasing" in r.output


def test_a_causal_lm_proxy_trains_saves_and_serves_the_same_answers(llama_dir, prepared, tmp_path):
    from proxy_model.train import train

    cfg = TrainConfig(encoder=str(llama_dir), pooling="last-layers", freeze_encoder=True, members=2, epochs=30,
                      batch_size=8, max_length=32, head_learning_rate=3e-3, hidden_size=32, bf16="no")
    summary = train(prepared, tmp_path, cfg, progress=False)
    doc = json.loads((tmp_path / "proxy_config.json").read_text())["head"]
    assert (doc["pooling"], doc["pool_layers"], doc["chat_template"], doc["feature_norm"], doc["members"]) == (
        "last-layers", [1, 2], True, True, 2)
    assert doc["encoder_dim"] == 2 * 32
    losses = [h["loss"] for h in summary["log_history"] if "loss" in h]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    prompts = ["please answer briefly in one word what is music 99",
               "write a long detailed essay about music step by step 99"]
    first = LengthPredictor.load(tmp_path, timeout_s=None, dtype="fp32").predict(prompts, ["m-short"] * 2)
    again = LengthPredictor.load(tmp_path, timeout_s=None, dtype="fp32").predict(prompts[1:], ["m-short"])
    assert again[0] == pytest.approx(first[1], rel=1e-4)
    assert first[1] > first[0]  # the essay prompt is the long one (the training pattern)
