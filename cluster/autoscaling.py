"""Serve autoscaling of LLM replicas driven by the router's predicted outstanding work.

Serve's default policy scales on ongoing requests per replica, which treats a 10-token answer
and a 2,000-token one alike. The router knows better: the predicted output tokens of everything
queued or running (``Scheduler.outstanding_work()``). This policy asks for enough replicas that
each holds about ``target_work_per_replica`` predicted tokens:

    desired = ceil(outstanding_work / target_work_per_replica), within [min_replicas, max_replicas]

Serve then applies its usual damping (``upscale_delay_s``, ``downscale_delay_s``, scaling
factors) and bounds. A good target is one replica's decode throughput times the backlog you
accept: 8 sequences x 30 tokens/s x 20 s = about 5,000 tokens. When the router cannot be read
(not started yet, restarting, slow), the policy falls back to Serve's own rule on ongoing
requests, so scaling never stalls on a missing signal.

Use it from a Serve config (the LLM deployment's ``autoscaling_config``)::

    policy:
      policy_function: cluster.autoscaling:OutstandingWorkPolicy
      policy_kwargs: {target_work_per_replica: 5000, router_name: ssjf-router}

The policy object lives in the Serve controller and is called every control-loop tick (about
0.1 s), so it never waits on the router: it polls ``outstanding_work()`` at most every
``poll_interval_s`` and uses the last answer while the next one is in flight. Serve pickles this
module by value into the controller: keep it free of imports from the rest of the project.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("ray.serve")

STATE_WORK = "ssjf_outstanding_work"
STATE_SIGNAL = "ssjf_signal"


@dataclass(frozen=True)
class WorkScalingConfig:
    target_work_per_replica: float = field(default=5000.0, metadata={"help": "Predicted tokens (queued + running) one replica should hold."})
    router_name: str = field(default="ssjf-router-ssjf", metadata={"help": "Name of the router actor (ray.get_actor): ssjf-router-<app name> unless router.actor_name is set."})
    router_namespace: str | None = field(default="ssjf", metadata={"help": "Its namespace (router.namespace); None: the Serve controller's own."})
    router_method: str = field(default="outstanding_work", metadata={"help": "Router method answering predicted tokens: a number, a mapping with 'total', or a snapshot (its replicas' outstanding_work summed). A router without it is read through 'snapshot'."})
    poll_interval_s: float = field(default=1.0, metadata={"help": "Least time between two reads of the router."})
    max_signal_age_s: float = field(default=10.0, metadata={"help": "An answer older than this is stale: fall back to ongoing requests."})

    def __post_init__(self):
        if not self.target_work_per_replica > 0:
            raise ValueError(f"target_work_per_replica must be > 0, got {self.target_work_per_replica}")
        if not self.router_name:
            raise ValueError(f"router_name must be non-empty, got {self.router_name!r}")
        if self.poll_interval_s < 0:
            raise ValueError(f"poll_interval_s must be >= 0, got {self.poll_interval_s}")
        if not self.max_signal_age_s > 0:
            raise ValueError(f"max_signal_age_s must be > 0, got {self.max_signal_age_s}")


def desired_replicas(outstanding_work: float, *, target_work_per_replica: float, min_replicas: int,
                     max_replicas: int) -> int:
    """Replicas for this much predicted work: ceil(work / target), within the bounds."""
    if outstanding_work < 0:
        raise ValueError(f"outstanding_work must be >= 0, got {outstanding_work}")
    want = math.ceil(outstanding_work / target_work_per_replica - 1e-9)
    return max(min_replicas, min(max_replicas, want))


def ongoing_requests_fallback(ctx: Any) -> float:
    """Serve's default rule: total ongoing requests / target_ongoing_requests per replica."""
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas
    target = ctx.config.get_target_ongoing_requests() if ctx.config is not None else 2.0
    return ctx.total_num_requests / target


def total_work(answer: Any) -> float:
    """The router's answer as one number: a number; a mapping with a 'total'; a scheduler snapshot
    (``{"replicas": [{"outstanding_work": ...}, ...]}``, plus ``shared_queued_work`` if present);
    else a mapping whose numeric values are summed (per model or per replica)."""
    if isinstance(answer, Mapping):
        if "total" in answer:
            return float(answer["total"])
        if isinstance(answer.get("replicas"), list):
            return float(sum(r.get("outstanding_work", 0.0) for r in answer["replicas"])
                         + answer.get("shared_queued_work", 0.0))
        return float(sum(v for v in answer.values() if isinstance(v, (int, float)) and not isinstance(v, bool)))
    return float(answer)


class RouterWorkReader:
    """Reads the router's outstanding work without ever blocking the caller.

    ``poll(now)`` collects a finished call if there is one, starts the next call when
    ``poll_interval_s`` has passed, and returns the latest answer and when it arrived.
    """

    def __init__(self, config: WorkScalingConfig):
        self.config = config
        self._handle = None
        self._ref = None
        self._last_call_at = -math.inf
        self._method_name = config.router_method
        self.value: float | None = None
        self.value_at: float | None = None

    def poll(self, now: float) -> tuple[float | None, float | None]:
        import ray

        if self._ref is not None:
            ready, _ = ray.wait([self._ref], timeout=0)
            if ready:
                ref, self._ref = self._ref, None
                try:
                    self.value, self.value_at = total_work(ray.get(ref)), now
                except Exception as e:  # router died or restarted: look it up again next time
                    logger.warning("SSJF autoscaling: reading %s.%s failed (%s); falling back to ongoing "
                                   "requests until it answers", self.config.router_name, self.config.router_method, e)
                    self._handle = None
        if self._ref is None and now - self._last_call_at >= self.config.poll_interval_s:
            self._last_call_at = now
            if self._handle is None:
                try:
                    self._handle = ray.get_actor(self.config.router_name, namespace=self.config.router_namespace)
                except ValueError:
                    return self.value, self.value_at  # not started yet
            self._ref = self._method().remote()
        return self.value, self.value_at

    def _method(self):
        try:
            return getattr(self._handle, self._method_name)
        except AttributeError:
            if self._method_name == "snapshot":
                raise
            logger.warning("SSJF autoscaling: router %s has no method %s; reading its snapshot instead",
                           self.config.router_name, self._method_name)
            self._method_name = "snapshot"
            return self._handle.snapshot


class OutstandingWorkPolicy:
    """A Serve custom autoscaling policy (class form: Serve builds it once with ``policy_kwargs``
    and calls it every tick): replicas from predicted outstanding work, ongoing requests when the
    router is silent."""

    def __init__(self, reader_factory: Callable[[WorkScalingConfig], RouterWorkReader] | None = None, **kwargs):
        self.config = WorkScalingConfig(**kwargs)
        self.reader = (reader_factory or RouterWorkReader)(self.config)
        self._last_signal: str | None = None

    def __call__(self, ctx: Any) -> tuple[float, dict]:
        now = ctx.current_time if ctx.current_time is not None else time.time()
        value, value_at = self.reader.poll(now)
        fresh = value is not None and value_at is not None and now - value_at <= self.config.max_signal_age_s
        if fresh:
            desired: float = desired_replicas(
                value, target_work_per_replica=self.config.target_work_per_replica,
                min_replicas=ctx.capacity_adjusted_min_replicas, max_replicas=ctx.capacity_adjusted_max_replicas)
            signal = "router"
        else:
            desired = ongoing_requests_fallback(ctx)
            signal = "ongoing-requests"
        if signal != self._last_signal:
            logger.info("SSJF autoscaling of %s now follows %s", getattr(ctx, "deployment_name", "?"), signal)
            self._last_signal = signal
        return desired, {STATE_WORK: value, STATE_SIGNAL: signal}
