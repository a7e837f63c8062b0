"""The document pool stage (``longvlm pool``): PDFs -> rendered, layout-parsed, deduplicated pool.

The pool's format and its reader (``Pool``) are in ``megatron_vlm.formats.pool``.
"""
