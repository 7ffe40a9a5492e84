"""The ``hf`` engine's load and continuous-batching choices, without loading a model."""

import math

import pytest

from deployments.config import LLMSettings
from deployments.engines.hf import (
    CB_SAFETY_MARGIN,
    continuous_sizing,
    resolve_dtype,
    resolve_gguf_weights,
)


def test_dtype_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("auto", "cuda:1") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda", gpu_default="float16") == "float16"  # the deepspeed engine's choice
    for explicit in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(explicit, "cuda") == resolve_dtype(explicit, "cpu") == explicit


def test_gguf_weights_auto_is_dense():
    assert resolve_gguf_weights("auto", "cuda") == resolve_gguf_weights("auto", "cpu") == "dense"
    assert resolve_gguf_weights("packed", "cuda") == "packed"


@pytest.mark.parametrize("slots", [1, 4, 32, 128])
def test_auto_kv_pages_hold_every_slot_with_the_scheduler_margin(slots):
    pages, tokens = continuous_sizing(slots, page_size=64, kv_pages=None, max_batch_tokens=None, tokens_per_slot=2048)
    # What the FIFO scheduler lets requests fill before it stops admitting prompts:
    usable_pages = pages * (1 - CB_SAFETY_MARGIN)
    assert usable_pages >= slots * math.ceil(2048 / 64)
    assert tokens >= slots + 1024 and tokens >= 2048  # every slot decodes each step, and prompts prefill


def test_explicit_sizes_win():
    assert continuous_sizing(128, 64, kv_pages=256, max_batch_tokens=2048, tokens_per_slot=2048) == (256, 2048)
    pages, tokens = continuous_sizing(128, 64, kv_pages=None, max_batch_tokens=4096, tokens_per_slot=300)
    assert tokens == 4096 and pages * (1 - CB_SAFETY_MARGIN) >= 128 * 5


def test_llm_settings_accept_auto_and_none():
    s = LLMSettings()
    assert (s.dtype, s.gguf_weights, s.kv_pages, s.max_batch_tokens) == ("auto", "auto", None, None)
    LLMSettings(dtype="bfloat16", gguf_weights="packed", kv_pages=32, max_batch_tokens=256)
    with pytest.raises(ValueError, match="llm.dtype"):
        LLMSettings(dtype="int8")
    with pytest.raises(ValueError, match="llm.gguf_weights"):
        LLMSettings(gguf_weights="q4")
    with pytest.raises(ValueError, match="kv_pages"):
        LLMSettings(kv_pages=0)
