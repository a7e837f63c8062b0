"""``longvlm pool``: build (or resume) a pool, or merge shard pools with ``--merge``."""

from __future__ import annotations

from preprocess.pool.build import build_pool
from preprocess.pool.config import PoolConfig
from preprocess.pool.merge import merge_pools
from preprocess.pool.outputs import PoolSummary


def run(config: PoolConfig) -> PoolSummary:
    """Build, resume or confirm the pool of ``config`` (or merge shard pools with ``--merge``)."""
    return merge_pools(config) if config.merge else build_pool(config)
