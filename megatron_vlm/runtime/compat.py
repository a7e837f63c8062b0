"""Fixes for Megatron-Core 0.16 bugs that this stack's paths meet (applied on every device).

``CheckpointWithoutOutput()`` (the ``layernorm`` recompute module's, built with its default
``fp8=False``) sets ``self.fp8 = fp8 is not None``, i.e. True, and then reads Transformer Engine's
FP8 state, a ``NameError`` without Transformer Engine. Without TE there is no FP8: the object's
``fp8`` is set False.
"""

from __future__ import annotations

import functools


def apply_megatron_compat() -> None:
    """Idempotent."""
    from megatron.core.tensor_parallel import random as tp_random

    init = tp_random.CheckpointWithoutOutput.__init__
    if tp_random.HAVE_TE or getattr(init, "_longvlm_compat", False):
        return

    @functools.wraps(init)
    def without_te(self, fp8=False):
        init(self, fp8=fp8)
        self.fp8 = False

    without_te._longvlm_compat = True
    tp_random.CheckpointWithoutOutput.__init__ = without_te
