"""``Qwen25VLModel``: the native Megatron-Core Qwen2.5-VL (the shared VLM with Qwen2.5-VL's windowed vision tower)."""

from __future__ import annotations

from megatron_vlm.models.config import VLModelConfig
from megatron_vlm.models.qwen25vl.vision import Qwen25VisionModel
from megatron_vlm.models.vlm import VisionLanguageModel


class Qwen25VLModel(VisionLanguageModel):
    """Qwen2.5-VL: language layers are the configured GPT layers (QKV bias via the config)."""

    def build_vision_model(self, config: VLModelConfig) -> Qwen25VisionModel:
        return Qwen25VisionModel(config.vision, config.block_spec(config.vision.num_layers, causal=False),
                                 config.norm_module())
