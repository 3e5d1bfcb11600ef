"""Routing a conversation's calls to the replica that holds its state (the Sampler's prefix cache,
the Toolset's retrieval session), within a bounded load.

Serve's consistent-hash router maps a session id (the Chat sets one per conversation) to a replica
on a hash ring, and goes on to the ring's next replicas only when that one is full
(max_ongoing_requests). Conversations are few and uneven, so one replica can hold many more
requests than another long before it is full. ConversationRouter passes over a replica with more
than `max_excess` requests in flight above the least loaded one's, for the next on the ring
(consistent hashing with bounded loads): the conversation keeps to that one while the first
stays busy.
"""

from __future__ import annotations

from typing import Hashable

from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter


def bounded_ranks(ranked: list[Hashable], loads: dict[Hashable, int | None],
                  max_excess: int) -> list[Hashable]:
    """The replicas to try, in order, for a conversation whose replicas in ring order are `ranked`:
    those with at most `max_excess` requests in flight above the least loaded replica's (`loads`:
    every replica's count, None where unknown, which counts as within), then the least loaded
    replica not among those, then the rest of `ranked`."""
    known = [n for n in loads.values() if n is not None]
    if not known:
        return list(ranked)
    least = min(known)
    within = [r for r in ranked if loads.get(r) is None or loads[r] <= least + max_excess]
    idlest = [r for r, n in loads.items() if n == least and r not in within][:1]
    return within + idlest + [r for r in ranked if r not in within + idlest]


class ConversationRouter(ConsistentHashRouter):
    """Serve's consistent-hash router with bounded load (`max_excess`, a request_router_kwargs
    entry, with the ring's `num_virtual_nodes` and `num_fallback_replicas`). The loads are this
    router's view: Serve's cache of each replica's requests in flight."""

    def initialize_state(self, max_excess: int = 4, **kwargs) -> None:
        if not isinstance(max_excess, int) or max_excess < 0:
            raise ValueError(f"max_excess must be a non-negative int, got {max_excess!r}")
        super().initialize_state(**kwargs)
        self._max_excess = max_excess

    async def choose_replicas(self, candidate_replicas, pending_request=None):
        ranks = await super().choose_replicas(candidate_replicas, pending_request)
        if len(candidate_replicas) < 2 or any(len(rank) != 1 for rank in ranks):
            return ranks  # one replica, or no session to hash (every replica, one rank)
        by_id = {r.replica_id: r for r in candidate_replicas}
        loads = {i: self._replica_queue_len_cache.get(i) for i in by_id}
        order = bounded_ranks([rank[0].replica_id for rank in ranks], loads, self._max_excess)
        return [[by_id[i]] for i in order if i in by_id]
