"""The Serve ``RequestRouter`` of the LLM deployment: it sends each call to the replica the central
router chose (the call's ``target_replica_id`` keyword), instead of choosing one itself.

Ray Serve 2.60 behaviour this relies on: one pinned call at a time per ingress request (retries
are sequential), ``should_backoff`` set so a missing target backs off instead of spinning, and a
target that does not show up in Serve's replica list within ``pin_grace_s`` (it died, or is too
new for this handle to know) is sent to any replica, which bounces it as misrouted so the ingress
asks the central router again: no call waits forever.
"""

from __future__ import annotations

import time

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

TARGET_KWARG = "target_replica_id"


class PinnedRequestRouter(RequestRouter):
    """Route a call to ``kwargs["target_replica_id"]`` (a ``ReplicaID.unique_id``); calls without it go anywhere."""

    def initialize_state(self, pin_grace_s: float = 3.0, **kwargs):
        self.pin_grace_s = pin_grace_s

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is None:
            return [candidate_replicas]
        # Without this the base router retries a missing target in a loop that never yields.
        pending_request.routing_context.should_backoff = True
        target = pending_request.kwargs.get(TARGET_KWARG)
        if target is None:
            return [candidate_replicas]
        for replica in candidate_replicas:
            if replica.replica_id.unique_id == target:
                return [[replica]]
        if time.time() - pending_request.created_at > getattr(self, "pin_grace_s", 3.0):
            return [candidate_replicas]  # the receiving replica answers "misrouted"
        return []  # not in this handle's replica list yet: back off and look again
