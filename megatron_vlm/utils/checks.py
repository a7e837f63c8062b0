"""Range checks of numeric settings, each reported as one line naming the setting.

Every config's own ``check``/``validate`` calls these for its numbers, so that ``nan``, ``inf``,
``-1`` or ``1e30`` given on a command line or in a recipe is refused where the setting is declared,
before any work, with the same wording everywhere.
"""

from __future__ import annotations

import math

from megatron_vlm.errors import ConfigError, LongVLMError

MAX_GPUS = 2 ** 20  # processes of one job (and so any TP, PP, CP or DP size): more than any cluster has
MAX_WORKERS = 1024  # processes or threads one command starts: more than any node has cores
MAX_SEQ_LEN = 2 ** 24  # the longest packed row any stage takes: 16M tokens, 32x the paper's longest
MAX_IMAGE_PIXELS = 2 ** 26  # a lower bound on an image's pixels scales every image up to it: 8K x 8K at most
MAX_DPI = 1200  # a page rendered finer is only shrunk again to the model's largest image (A4 at 1200 dpi: 140M pixels)
MAX_WAIT_S = 86400.0  # a timeout or back-off of more than a day is a typo


def number_error(name: str, value: object, *, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None) -> str | None:
    """What is wrong with ``value`` as the setting ``name``: not a finite number within the bounds (``gt`` >,
    ``ge`` >=, ``lt`` <, ``le`` <=); ``None`` if nothing is (an unset optional setting passes)."""
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"{name} must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    if (gt is None or value > gt) and (ge is None or value >= ge) and (lt is None or value < lt) \
            and (le is None or value <= le):
        return None
    bounds = [f"> {gt:g}" if gt is not None else "", f">= {ge:g}" if ge is not None else "",
              f"< {lt:g}" if lt is not None else "", f"<= {le:g}" if le is not None else ""]
    return f"{name} must be {' and '.join(b for b in bounds if b)}, got {value}"


def check_number(name: str, value: object, *, error: type[LongVLMError] = ConfigError, **bounds: float) -> None:
    """Raise ``error`` with :func:`number_error`'s message if ``value`` is not a number within ``bounds``."""
    if (problem := number_error(name, value, **bounds)) is not None:
        raise error(problem)
