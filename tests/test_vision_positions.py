"""Each family's smart_resize and patch layout, and the mRoPE positions, against transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_vlm.models.positions import IMAGE_TOKEN_ID, mrope_position_ids, packed_mrope_position_ids
from megatron_vlm.models.registry import get_family

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]


def _processor(geometry, **kwargs):
    """transformers' image processor with a family's parameters (Qwen3-VL's preprocessor is the same class)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=geometry.patch_size, merge_size=geometry.merge_size,
                                    temporal_patch_size=geometry.temporal_patch_size, image_mean=list(geometry.mean),
                                    image_std=list(geometry.std), **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_smart_resize_matches_transformers(family):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    geometry = get_family(family).geometry
    rng = np.random.default_rng(0)
    sizes = [(1684, 1191), (1191, 1684), (28, 28), (10, 10), (5000, 30), (7000, 9000), (56, 5000)]
    sizes += [tuple(int(x) for x in rng.integers(20, 4000, 2)) for _ in range(300)]
    for min_pixels, max_pixels in [(3136, 12845056), (3136, 1003520), (200704, 1605632),
                                   (geometry.min_pixels, geometry.max_pixels)]:
        for h, w in sizes:
            assert geometry.smart_resize(h, w, min_pixels=min_pixels, max_pixels=max_pixels) == \
                hf_smart_resize(h, w, factor=geometry.factor, min_pixels=min_pixels, max_pixels=max_pixels), (h, w)


def test_smart_resize_rejects_extreme_aspect_ratio():
    with pytest.raises(ValueError, match="aspect ratio"):
        get_family("qwen2_5_vl").geometry.smart_resize(28, 28 * 201)


@pytest.mark.parametrize("family,size", [("qwen2_5_vl", (56, 56)), ("qwen2_5_vl", (112, 84)),
                                         ("qwen2_5_vl", (308, 224)), ("qwen2_5_vl", (1176, 840)),
                                         ("qwen3_vl", (64, 64)), ("qwen3_vl", (320, 256)), ("qwen3_vl", (1024, 768))])
def test_image_to_patches_matches_image_processor(family, size):
    """Patch 14 with CLIP normalization (Qwen2.5-VL) and patch 16 with mean = std = 0.5 (Qwen3-VL)."""
    from PIL import Image

    geometry = get_family(family).geometry
    h, w = size
    rng = np.random.default_rng(h * w)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    expected = _processor(geometry, min_pixels=3136, max_pixels=12845056)(images=[Image.fromarray(pixels)],
                                                                          return_tensors="np")
    patches, thw = geometry.image_to_patches(Image.fromarray(pixels))
    patch = geometry.patch_size
    assert patches.shape == (h * w // patch ** 2, geometry.patch_dim)
    assert list(thw) == expected["image_grid_thw"][0].tolist() == list(geometry.grid_thw(h, w))
    np.testing.assert_allclose(patches, expected["pixel_values"], rtol=0, atol=2e-6)
    assert geometry.llm_tokens(h, w) == int(np.prod(expected["image_grid_thw"][0])) // 4 == h * w // geometry.factor ** 2


def test_image_to_patches_rejects_unaligned_size():
    with pytest.raises(ValueError, match="multiple of 28"):
        get_family("qwen2_5_vl").geometry.image_to_patches(np.zeros((30, 28, 3), np.uint8))


def _hf_rope_index(input_ids: np.ndarray, grids: np.ndarray, family: str = "qwen2_5_vl") -> np.ndarray:
    """transformers' ``get_rope_index`` of the family's model (Qwen2.5-VL's or Qwen3-VL's)."""
    if family == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel as Model
    else:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel as Model
    config = get_family(family).tiny_config(vocab_size=1000, num_layers=1, vision_depth=1)
    model = Model(config)
    ids = torch.as_tensor(input_ids)[None]
    positions, _ = model.get_rope_index(ids, mm_token_type_ids=(ids == IMAGE_TOKEN_ID).int(),
                                        image_grid_thw=torch.as_tensor(grids))
    return positions[:, 0].numpy()


def _sample(rng, grids, text_lens):
    """Text / <|vision_start|> image <|vision_end|> / ... / text, as the build stage lays pages out."""
    parts = [rng.integers(0, 151000, text_lens[0])]
    for (t, gh, gw), n_text in zip(grids, text_lens[1:]):
        parts += [[151652], np.full(t * gh * gw // 4, IMAGE_TOKEN_ID), [151653], rng.integers(0, 151000, n_text)]
    return np.concatenate(parts).astype(np.int64)


@pytest.mark.parametrize("family", FAMILIES)
def test_mrope_positions_match_get_rope_index(family):
    """One position rule for both families (Qwen3-VL interleaves the frequencies, not the ids)."""
    rng = np.random.default_rng(0)
    grids = np.array([[1, 4, 6], [1, 8, 2], [1, 2, 2], [1, 10, 14]])
    ids = _sample(rng, grids, [5, 3, 0, 7, 4])
    ours = mrope_position_ids(ids, grids)
    np.testing.assert_array_equal(ours, _hf_rope_index(ids, grids, family))
    # hand check: after a (1, 10, 14) image (LLM grid 5 x 7) positions advance by max(5, 7) = 7
    end_of_last_image = np.flatnonzero(ids == IMAGE_TOKEN_ID)[-1]
    assert ours[0, end_of_last_image + 1] == ours[0, end_of_last_image - 34] + 7


def test_text_only_positions_are_arange():
    ids = np.arange(10)
    np.testing.assert_array_equal(mrope_position_ids(ids, np.zeros((0, 3))), np.tile(np.arange(10), (3, 1)))


def test_packed_positions_restart_per_sample():
    rng = np.random.default_rng(1)
    g1, g2 = np.array([[1, 4, 4]]), np.array([[1, 6, 2], [1, 2, 8]])
    s1, s2 = _sample(rng, g1, [3, 2]), _sample(rng, g2, [1, 4, 2])
    packed = packed_mrope_position_ids(np.concatenate([s1, s2, [0, 0]]), np.concatenate([g1, g2]),
                                       np.array([0, len(s1), len(s1) + len(s2)]))
    np.testing.assert_array_equal(packed[:, :len(s1)], _hf_rope_index(s1, g1))
    np.testing.assert_array_equal(packed[:, len(s1):len(s1) + len(s2)], _hf_rope_index(s2, g2))
    np.testing.assert_array_equal(packed[:, -2:], np.tile([0, 1], (3, 1)))


def test_mismatched_grids_are_an_error():
    ids = np.concatenate([[1], np.full(4, IMAGE_TOKEN_ID), [2]])
    with pytest.raises(ValueError, match="needs 8"):
        mrope_position_ids(ids, np.array([[1, 4, 8]]))
    with pytest.raises(ValueError, match="1 image-token runs but 2"):
        mrope_position_ids(ids, np.array([[1, 4, 4], [1, 4, 4]]))
