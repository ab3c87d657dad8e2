"""Paged KV-cache accounting: blocks of block_size tokens per request.

Only counts are kept (no block ids, no prefix caching): a request holding
`num_blocks` blocks can cache `num_blocks x block_size` tokens::

    request tokens:  [................................|.....]
    blocks:          [ blk0 ][ blk1 ][ blk2 ][ blk3 ][ blk4 ]   block_size = 8
                                                      ^ partly filled

`allocate_slots` grows a request to cover num_computed_tokens + new tokens,
or returns None when the pool is short, leaving it untouched (the scheduler
then preempts), as vLLM v1's KVCacheManager does.
"""

from __future__ import annotations

__all__ = ["KVCacheManager"]

from dualpool.engine.request import Request


class KVCacheManager:
    """Free/used block counts of one instance."""

    __slots__ = ("block_size", "num_free_blocks", "num_gpu_blocks")

    def __init__(self, num_gpu_blocks: int, block_size: int) -> None:
        if num_gpu_blocks <= 0 or block_size <= 0:
            raise ValueError(
                f"need positive blocks and block_size, got {num_gpu_blocks}, {block_size}"
            )
        self.num_gpu_blocks = num_gpu_blocks
        self.block_size = block_size
        self.num_free_blocks = num_gpu_blocks

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

    def free(self, request: Request) -> None:
        """Return all of the request's blocks to the pool."""
        self.num_free_blocks += request.num_blocks
        request.num_blocks = 0
