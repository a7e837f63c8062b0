"""Qwen3-VL (dense): the family record (``megatron_vlm.models.family``); its parts are the modules of this folder.

``arch`` (config.json), ``config`` (Megatron configs), ``vision`` (LayerNorm/GELU tower with learned
positions and DeepStack taps), ``model`` (q/k norm, DeepStack layers, interleaved mRoPE), ``mapping``
(HF <-> Megatron rules), ``chat`` (token ids, chat template), ``tiny`` (test configs).
"""

from megatron_vlm.models.family import ModelFamily
from megatron_vlm.models.geometry import ImageGeometry
from megatron_vlm.models.qwen3vl.arch import Qwen3VLArch
from megatron_vlm.models.qwen3vl.chat import CHAT

# Qwen3-VL's preprocessor: patch 16, merge 2 (one LLM token per 32 x 32 pixels), mean = std = 0.5,
# 65,536 to 16,777,216 pixels (its size.shortest_edge / longest_edge).
GEOMETRY = ImageGeometry(patch_size=16, min_pixels=65536, max_pixels=16777216, mean=(0.5, 0.5, 0.5),
                         std=(0.5, 0.5, 0.5))

FAMILY = ModelFamily(
    model_type="qwen3_vl",
    name="Qwen3-VL",
    hf_class="Qwen3VLForConditionalGeneration",
    arch=Qwen3VLArch,
    geometry=GEOMETRY,
    chat=CHAT,
    config_builder="megatron_vlm.models.qwen3vl.config:qwen3vl_config_from_hf",
    model="megatron_vlm.models.qwen3vl.model:Qwen3VLModel",
    mapping="megatron_vlm.models.qwen3vl.mapping:PARTS",
    tiny="megatron_vlm.models.qwen3vl.tiny:tiny_qwen3vl_config",
    preset_configs="megatron_vlm.models.qwen3vl.presets:PRESETS",
    tiny_recipe="tiny-qwen3vl-cpu",
)
