"""Range checks of numeric settings, each reported as one line naming the setting.

Every config's own ``check``/``validate`` calls these for its numbers, so that ``nan``, ``inf``,
``-1`` or ``1e30`` given on a command line or in a recipe is refused where the setting is declared,
before any work, with the same wording everywhere.
"""

from __future__ import annotations

import math

from megatron_vlm.errors import ConfigError, LongVLMError


def check_number(name: str, value: float | int | None, *, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None,
                 error: type[LongVLMError] = ConfigError) -> None:
    """Raise ``error`` naming ``name`` unless ``value`` is a finite number within the given bounds
    (``gt`` > , ``ge`` >=, ``lt`` <, ``le`` <=). ``None`` (an unset optional setting) passes."""
    if value is None:
        return
    bounds = [f"> {gt:g}" if gt is not None else "", f">= {ge:g}" if ge is not None else "",
              f"< {lt:g}" if lt is not None else "", f"<= {le:g}" if le is not None else ""]
    wanted = " and ".join(b for b in bounds if b)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (gt is None or value > gt) and (ge is None or value >= ge) \
        and (lt is None or value < lt) and (le is None or value <= le)
    if not ok:
        raise error(f"{name} must be a finite number{' ' + wanted if wanted else ''}, got {value}")
