"""Loading a causal LM the way both users of one do: the ``hf`` engine of an LLM replica and
``proxy-model collect`` (which records that model's reply lengths). One loader, so the lengths a
proxy is trained on come from the model as it is served: same dtype rule, same GGUF handling, same
attention backend.
"""

from __future__ import annotations

from proxy_model.offline_models import resolve_model_name


def resolve_dtype(dtype: str, device: str, gpu_default: str = "bfloat16") -> str:
    """``auto``: ``gpu_default`` on CUDA (vLLM's choice for bf16-trained models), float32 on CPU."""
    if dtype == "auto":
        return gpu_default if str(device).startswith("cuda") else "float32"
    return dtype


def disable_cudnn_attention() -> None:
    """Keep torch's SDPA off its cuDNN backend in this process.

    Measured on an H200 (torch 2.11, CUDA 13, SmolLM2-135M bf16, docs/engine_speed.md): with a KV
    cache every decode step called ``_cudnn_attention_forward``, which spent about 2 ms of CPU per
    layer per step (60% of the step's CPU time, against 5.5 ms of GPU time for the whole step at
    batch 128), so a step took 50-65 ms at any batch size. Without it SDPA uses the flash or
    memory-efficient kernels: continuous x128 went from 665 to 1,375 tokens/s, batch 1 from 19 to 32.
    """
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


def from_pretrained(path: str, kwargs: dict, device: str, dtype_name: str, weights: str = "dense"):
    """The model at ``path`` (``kwargs`` from :func:`resolve_model_name`), in ``dtype_name`` on
    ``device``, in eval mode; a GGUF file loads dense unless ``weights`` is ``packed``."""
    import torch
    from transformers import AutoModelForCausalLM

    if "gguf_file" in kwargs and weights == "dense":
        from transformers import GgufConfig

        kwargs = {**kwargs, "quantization_config": GgufConfig(dequantize=True)}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype_name), **kwargs)
    if str(device).startswith("cuda"):
        disable_cudnn_attention()
    return model.to(device).eval()


def load_causal_lm(name: str, device: str = "cpu", dtype: str = "auto", weights: str = "dense"):
    """(model, tokenizer) of a built-in alias, hub name or local path."""
    from transformers import AutoTokenizer

    path, kwargs = resolve_model_name(name)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    return from_pretrained(path, kwargs, device, resolve_dtype(dtype, device), weights), tokenizer
