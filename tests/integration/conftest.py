"""Integration fixtures: one local Ray + Serve per session (free HTTP port), apps torn down per test.

- ``serve_url``: Serve's HTTP address (session). Ray starts in-process, so it dies with pytest.
- ``deploy(config)``: runs ``deployments.app.build_app(config)`` under its own route prefix (through
  ``cluster.lifecycle.serve_cluster``, the lifecycle bench and the demo use) and returns an
  :class:`App`; the app and its router actor are removed when the test ends.
- ``tiny_model_dir``: a tiny random Llama with a tokenizer trained here by ``tokenizers``
  (seconds to build and load; nothing downloaded), for ``hf``/``deepspeed`` tests.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

import pytest

# Before Ray starts: the workers inherit this environment.
for _key, _value in {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                     "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu",
                     "RAY_SERVE_LOG_TO_STDERR": "0"}.items():
    os.environ.setdefault(_key, _value)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        # Logical CPUs: replicas reserve fractions; the machine's 2 cores are shared by all.
        ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False, namespace="ssjf-tests")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_url(ray_session):
    from ray import serve

    from cluster.lifecycle import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@dataclass
class App:
    name: str
    url: str  # base URL of this app (its route prefix)
    config: dict

    def router(self):
        import ray

        from deployments.config import AppConfig

        cfg = AppConfig.from_dict(self.config)
        return ray.get_actor(cfg.router_actor_name, namespace=cfg.router.namespace)

    def snapshot(self, dispatch_log: bool = False) -> dict:
        import ray

        return ray.get(self.router().snapshot.remote(dispatch_log), timeout=30)


@contextlib.contextmanager
def _deploying(serve_url: str):
    """Yields ``deploy(config) -> App``; removes everything it deployed on exit."""
    from cluster.lifecycle import serve_cluster

    with contextlib.ExitStack() as stack:
        def _run(config: dict) -> App:
            # On the session's Ray and Serve, serve_cluster puts the app under /<name>, waits until
            # every LLM replica has registered, and on exit removes the app and its router actor.
            url = stack.enter_context(serve_cluster(config, ray_address=None, num_cpus=None, ready_timeout_s=180))
            assert url == f"{serve_url}/{config['name']}", url
            return App(config["name"], url, config)

        yield _run


@pytest.fixture
def deploy(serve_url):
    """``deploy(config) -> App``; everything deployed is removed at the end of the test."""
    with _deploying(serve_url) as run:
        yield run


@pytest.fixture(scope="module")
def deploy_module(serve_url):
    """Like ``deploy``, for an app shared by the tests of one module (torn down at its end)."""
    with _deploying(serve_url) as run:
        yield run


def make_replay_config(name: str, **sections) -> dict:
    """A replay-engine app that fits this machine: no CPU reserved, marker predictions."""
    cfg = {
        "name": name,
        "router": {"policy": "ssjf"},
        "proxy": {"predictor": "marker", "num_cpus": 0, "constant_tokens": 100},
        "llm": {"engine": "replay", "num_replicas": 2, "batching": "continuous", "max_batch": 2,
                "time_scale": 0.1, "num_cpus": 0, "heartbeat_s": 0.5},
        "ingress": {"num_cpus": 0},
    }
    for key, values in sections.items():
        cfg[key] = {**cfg.get(key, {}), **values}
    return cfg


@pytest.fixture
def replay_config():
    """``replay_config(name, llm={...}, router={...})``: a small replay-engine app config."""
    return make_replay_config


@pytest.fixture
def wait():
    """``wait(predicate, timeout, what=...)``: poll until truthy (TimeoutError otherwise)."""
    return wait_until


# ---- a tiny model, built here --------------------------------------------------------------
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, this is a tiny model for tests",
    "shortest job first scheduling with a proxy model",
    "ray serve routes requests to replicas",
    "what is the capital of france? paris is the capital of france.",
]


def build_tiny_llama(path) -> str:
    """A 2-layer random Llama (hidden 64, 512 positions) and a byte-level BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}assistant:{% endif %}")
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
