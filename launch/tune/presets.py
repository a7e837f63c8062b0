"""The model presets of ``longvlm tune`` (the GPU presets are ``megatron_vlm.hardware.GPUS``).

Model presets are the hub's ``config.json`` of each size of every registered family (each family's
``presets`` part, e.g. ``megatron_vlm/models/qwen3vl/presets.py``); they are parsed by the family's
config reader like any checkpoint's config.
"""

from __future__ import annotations

from megatron_vlm.models.registry import families

MODELS: dict[str, dict] = {name: config for family in families() for name, config in family.presets.items()}
