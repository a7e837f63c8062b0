"""The document pool stage (``longvlm pool``): PDFs -> rendered, layout-parsed, deduplicated pool."""

from preprocess.pool.reader import Pool, PoolFormatError

__all__ = ["Pool", "PoolFormatError"]
