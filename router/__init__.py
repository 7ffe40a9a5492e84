"""The scheduling core: pure Python (no Ray, no torch), so it imports in milliseconds and runs
inside the simulator unchanged. ``router.actor`` and ``router.serve_router`` wrap it for Ray."""

from router.batching import BatchingMode, Segment
from router.config import Balancer, SchedulerConfig
from router.policies import AgingRule, Policy, RequestQueue, create_request_queue
from router.request import Assignment, Preemption, Rejection, RequestMeta, RequestState, RequestStatus
from router.scheduler import QueueFullError, ReplicaState, Scheduler

__all__ = [
    "AgingRule", "Assignment", "Balancer", "BatchingMode", "Policy", "Preemption", "QueueFullError", "Rejection", "ReplicaState",
    "RequestMeta", "RequestQueue", "RequestState", "RequestStatus", "Scheduler", "SchedulerConfig", "Segment",
    "create_request_queue",
]
