"""Paged KV-cache accounting: blocks of block_size tokens per request.

Block counts, not block ids: a request holding `num_blocks` blocks can cache
`num_blocks x block_size` tokens::

    request tokens:  [................................|.....]
    blocks:          [ blk0 ][ blk1 ][ blk2 ][ blk3 ][ blk4 ]   block_size = 8
                                                      ^ partly filled

`allocate_slots` grows a request to cover num_computed_tokens + new tokens,
or returns None when the pool is short, leaving it untouched (the scheduler
then preempts), as vLLM v1's KVCacheManager does.

Prefix caching (vLLM v1's default; vllm/v1/core/kv_cache_manager.py and
block_pool.py, vLLM 0.19): a freed block keeps its content hash and stays in
the free queue, evictable, until an allocation takes it. The free queue is
FIFO: allocations pop from its head, frees append at its tail, and
`KVCacheManager.free` appends a request's blocks in reverse order, so its
tail blocks are evicted before its prefix. The workloads we replay share no
prefixes between requests, so the only hits that matter are a preempted
request's own blocks when it is re-admitted: it then skips recomputing its
surviving full blocks (`get_computed_blocks`, capped at num_tokens - 1 so
that one token is computed). The free queue is kept as segments: each
preempted request's surviving full blocks (its cached prefix) and, before
each, the count of other free blocks ahead of it (`gap`). Allocations only
decrement `num_free_blocks` (the scheduler's decode group takes blocks in
bulk); `_reconcile` applies them to the queue head lazily.
"""

from __future__ import annotations

__all__ = ["KVCacheManager"]

from collections import deque

from dualpool.engine.request import Request


def _segment(request: Request) -> list[object] | None:
    return request._cseg


class KVCacheManager:
    """Free/used block counts of one instance, and the cached prefixes of preempted requests."""

    __slots__ = ("_queued", "_segs", "_tail_gap", "block_size", "num_free_blocks", "num_gpu_blocks")

    def __init__(self, num_gpu_blocks: int, block_size: int) -> None:
        if num_gpu_blocks <= 0 or block_size <= 0:
            raise ValueError(
                f"need positive blocks and block_size, got {num_gpu_blocks}, {block_size}"
            )
        self.num_gpu_blocks = num_gpu_blocks
        self.block_size = block_size
        self.num_free_blocks = num_gpu_blocks
        # The free queue: [request, cached full blocks, other free blocks ahead of
        # them] per preempted request, then _tail_gap other blocks. _queued is its
        # length before the allocations not yet applied (num_free_blocks after).
        self._segs: deque[list[object]] = deque()
        self._tail_gap = num_gpu_blocks
        self._queued = num_gpu_blocks

    @property
    def num_used_blocks(self) -> int:
        return self.num_gpu_blocks - self.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (vllm:kv_cache_usage_perc, as 0..1)."""
        return self.num_used_blocks / self.num_gpu_blocks

    def blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        """Blocks to add so the request covers its computed + new tokens."""
        total = request.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - request.num_blocks)

    def allocate_slots(self, request: Request, num_new_tokens: int) -> int | None:
        """Grow the request's blocks; the number added, or None if short."""
        need = self.blocks_needed(request, num_new_tokens)
        if need > self.num_free_blocks:
            return None
        self.num_free_blocks -= need
        request.num_blocks += need
        return need

    def take(self, num_blocks: int) -> None:
        """Take blocks off the free queue's head (the caller checked they are free)."""
        self.num_free_blocks -= num_blocks

    def release(self, num_blocks: int) -> None:
        """Return blocks that no one will hit (finished or aborted requests)."""
        self.num_free_blocks += num_blocks
        self._queued += num_blocks
        self._tail_gap += num_blocks

    def free(self, request: Request) -> None:
        """Return all of the request's blocks to the pool (no cached prefix kept)."""
        self.release(request._blocks)
        request._blocks = 0

    def free_cached(self, request: Request, num_blocks: int, cached: int) -> None:
        """Free a preempted request's blocks, keeping its first `cached` full blocks hashed.

        Tail first (vLLM's reversed free order): the uncached blocks, then
        the cached ones from last to first, so eviction eats the prefix last.
        """
        self.num_free_blocks += num_blocks
        self._queued += num_blocks
        self._tail_gap += num_blocks - cached
        if cached > 0:
            seg: list[object] = [request, cached, self._tail_gap]
            self._tail_gap = 0
            self._segs.append(seg)
            request._cseg = seg

    def _reconcile(self) -> None:
        """Apply the allocations made since the last call to the free queue's head."""
        eat = self._queued - self.num_free_blocks
        if eat <= 0:
            return
        self._queued = self.num_free_blocks
        segs = self._segs
        while eat and segs:
            seg = segs[0]
            gap: int = seg[2]  # type: ignore[assignment]
            if gap >= eat:
                seg[2] = gap - eat
                return
            eat -= gap
            seg[2] = 0
            count: int = seg[1]  # type: ignore[assignment]
            if count > eat:
                seg[1] = count - eat
                return
            eat -= count
            segs.popleft()
            req: Request = seg[0]  # type: ignore[assignment]
            req._cseg = None
        self._tail_gap -= eat

    def cached_blocks(self, request: Request, extra: int = 0) -> int:
        """Full blocks of a waiting request still cached, after `extra` more allocations."""
        if request._cseg is None:
            return 0
        self._reconcile()
        # NOTE: re-read through a call: _reconcile may have evicted the whole
        # segment (request._cseg = None), and a narrowed attribute read would
        # not see it (mypyc compiles the narrowing as a type check).
        mine = _segment(request)
        if mine is None:
            return 0
        ahead = 0
        for seg in self._segs:
            gap: int = seg[2]  # type: ignore[assignment]
            count: int = seg[1]  # type: ignore[assignment]
            if seg is mine:
                eaten = extra - ahead - gap
                return count if eaten <= 0 else max(0, count - eaten)
            ahead += gap + count
        return 0  # pragma: no cover - a segment is always in the queue

    def take_cached(self, request: Request, num_blocks: int) -> None:
        """Re-admission: the request takes its first `num_blocks` cached blocks back.

        Its other cached blocks (if any) stay free as plain blocks. With
        num_blocks = 0 this just forgets the prefix (an aborted request).
        """
        seg = request._cseg
        if seg is None:
            return
        self._reconcile()
        request._cseg = None
        segs = self._segs
        try:
            i = segs.index(seg)
        except ValueError:
            return  # evicted entirely by the reconcile above
        del segs[i]
        rest: int = seg[2] + seg[1] - num_blocks  # type: ignore[operator]
        if i < len(segs):
            segs[i][2] += rest  # type: ignore[operator]
        else:
            self._tail_gap += rest
        self.num_free_blocks -= num_blocks
        self._queued -= num_blocks
