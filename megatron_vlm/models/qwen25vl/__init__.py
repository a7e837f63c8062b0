"""Qwen2.5-VL: the family record (``megatron_vlm.models.family``); its parts are the modules of this folder.

``arch`` (config.json), ``config`` (Megatron configs), ``vision`` (windowed SwiGLU tower), ``model``,
``mapping`` (HF <-> Megatron rules), ``chat`` (token ids, chat template), ``tiny`` (test configs).
"""

from megatron_vlm.models.family import ModelFamily
from megatron_vlm.models.geometry import ImageGeometry
from megatron_vlm.models.qwen25vl.arch import Qwen25VLArch
from megatron_vlm.models.qwen25vl.chat import CHAT

# Qwen2.5-VL-7B's preprocessor: patch 14, merge 2 (one LLM token per 28 x 28 pixels), CLIP mean/std.
GEOMETRY = ImageGeometry(patch_size=14, min_pixels=3136, max_pixels=12845056)

FAMILY = ModelFamily(
    model_type="qwen2_5_vl",
    name="Qwen2.5-VL",
    hf_class="Qwen2_5_VLForConditionalGeneration",
    arch=Qwen25VLArch,
    geometry=GEOMETRY,
    chat=CHAT,
    config_builder="megatron_vlm.models.qwen25vl.config:qwen25vl_config_from_hf",
    model="megatron_vlm.models.qwen25vl.model:Qwen25VLModel",
    mapping="megatron_vlm.models.qwen25vl.mapping:PARTS",
    tiny="megatron_vlm.models.qwen25vl.tiny:tiny_qwen25vl_config",
    preset_configs="megatron_vlm.models.qwen25vl.presets:PRESETS",
    tiny_recipe="tiny-cpu",
    hf_disk_prefixes=(("model.language_model.", "model."), ("model.visual.", "visual.")),
)
