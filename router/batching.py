"""Batching: how many requests a replica runs at once, when a slot frees, what an iteration costs.

The one definition of these rules: the scheduler counts slots with it, the replay engine steps its
iterations with it and the simulator jumps from one batch change to the next with it, so the three
cannot drift apart.

Slots (:func:`num_slots`, :func:`free_slots`, :func:`keeps_finished`): ``none`` runs one request at a
time. ``static``: when the replica is idle, a batch of up to ``max_batch`` starts and runs until its
longest member ends; a member that has emitted its last token stays in the batch as padding, so no
slot frees before the batch ends. ``continuous``: ``max_batch`` slots; a member leaves after its
own last token and a newcomer joins at the next iteration boundary. No mode waits to fill a batch.

Cost (:class:`Segment`): an iteration prefills the prompts of the members that join with it and
decodes one token for every member (static padding included, whose KV cache keeps growing as in a
padded ``generate``); it lasts ``EngineProfile.iteration_time_s(prefill tokens, members, KV-cache
tokens)``. Between two membership changes the batch runs one segment, whose cost has a closed form.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from router.policies import parse_enum


class BatchingMode(enum.Enum):
    """How many requests a replica runs at once, and when a slot frees (see the module docstring)."""

    NONE = "none"
    STATIC = "static"
    CONTINUOUS = "continuous"

    @classmethod
    def parse(cls, name) -> BatchingMode:
        return parse_enum(cls, name, "batching mode")


def num_slots(mode: BatchingMode, max_batch: int) -> int:
    """Slots of a replica: ``max_batch``, or 1 under ``none``."""
    return 1 if mode is BatchingMode.NONE else max_batch


def free_slots(mode: BatchingMode, slots: int, num_running: int) -> int:
    """How many requests may join a replica that has ``slots`` slots and runs ``num_running`` now."""
    if mode is BatchingMode.STATIC:
        # A static batch runs until its longest member ends: no slot frees before that.
        return 0 if num_running else slots
    return slots - num_running


def keeps_finished(mode: BatchingMode) -> bool:
    """Whether a member that emitted its last token stays in the batch (static: as padding, until
    the longest member ends and the whole batch leaves)."""
    return mode is BatchingMode.STATIC


class Segment(NamedTuple):
    """The iterations of one replica's batch between two membership changes.

    Its first iteration prefills ``prefill_tokens`` (the prompts of the members that join with it)
    while ``context_tokens`` KV-cache tokens are held by the members that joined earlier. Every
    iteration decodes one token for each of the ``batch_size`` members, so iteration ``i >= 1``
    holds ``context_tokens + prefill_tokens + i * batch_size`` KV-cache tokens. (A tuple: the
    simulator makes one per batch change, millions per run.)
    """

    prefill_tokens: int = 0
    batch_size: int = 0
    context_tokens: int = 0

    def iteration_s(self, profile, i: int) -> float:
        """Time of iteration ``i`` (0: the first, which prefills) of this segment."""
        if i == 0:
            return profile.iteration_time_s(self.prefill_tokens, self.batch_size, self.context_tokens)
        return profile.iteration_time_s(0, self.batch_size, self.kv_tokens(i))

    def span_s(self, profile, k: int) -> float:
        """Time of its first ``k`` iterations (closed form)."""
        return profile.span_s(k, self.prefill_tokens, self.batch_size, self.context_tokens)

    def iterations_done(self, profile, elapsed_s: float) -> int:
        """The first iteration boundary at or after ``elapsed_s`` into the segment (k >= 1)."""
        return profile.iterations_done(elapsed_s, self.prefill_tokens, self.batch_size, self.context_tokens)

    def kv_tokens(self, k: int) -> int:
        """KV-cache tokens of all members after ``k`` iterations (each member: its prompt plus one
        token per iteration it has run, padding included)."""
        return self.context_tokens + self.prefill_tokens + k * self.batch_size

    def next(self, k: int, *, left: int = 0, left_kv: int = 0, joined: int = 0, joined_prompt: int = 0) -> Segment:
        """The segment that follows ``k`` iterations of this one, where ``left`` members holding
        ``left_kv`` KV-cache tokens leave and ``joined`` members with ``joined_prompt`` prompt tokens
        join. With ``k == 0`` nothing has run yet, so the newcomers share its first iteration (and
        nobody can leave: a member leaves after an iteration)."""
        if k == 0:
            if left:
                raise ValueError("no member can leave a segment before its first iteration")
            return Segment(self.prefill_tokens + joined_prompt, self.batch_size + joined, self.context_tokens)
        stay = self.batch_size - left
        return Segment(joined_prompt, stay + joined, self.kv_tokens(k) - left_kv if stay else 0)
