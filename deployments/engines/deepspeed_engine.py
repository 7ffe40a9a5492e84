"""The ``deepspeed`` engine: the ``hf`` model wrapped by ``deepspeed.init_inference``.

On GPUs DeepSpeed injects its fused inference kernels and shards the model over
``tensor_parallel`` GPUs; on CPU (``DS_ACCELERATOR=cpu``) it runs the model plain, which keeps
the code path testable here. Batching ``none`` or ``static`` (the config refuses continuous).
"""

from __future__ import annotations

import logging
import os

from deployments.engines.hf import HFEngine

logger = logging.getLogger(__name__)


class DeepSpeedEngine(HFEngine):
    kind = "deepspeed"
    gpu_dtype = "float16"  # dtype "auto" on CUDA: what DeepSpeed's injected kernels are built for

    def _load_model(self, path: str, kwargs: dict):
        if self.device == "cpu":
            # DeepSpeed picks its accelerator at import time; without this it probes for CUDA.
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        import torch

        model = super()._load_model(path, kwargs)
        on_gpu = self.device.startswith("cuda")
        inject = self.settings.kernel_inject if self.settings.kernel_inject is not None else on_gpu
        if inject and not on_gpu:
            logger.warning("deepspeed kernel injection needs a GPU: running the model plain on %s", self.device)
            inject = False
        engine = deepspeed.init_inference(
            model, dtype=getattr(torch, self.dtype_name), replace_with_kernel_inject=inject,
            tensor_parallel={"tp_size": self.settings.tensor_parallel},
        )
        self.ds_engine = engine
        return engine.module
