"""The loader: micro-batches against transformers' Qwen2.5-VL processing; order, resume, sharding, workers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from megatron_vlm.data.dataset import BuiltDataset
from megatron_vlm.data.loader import build_data_loader
from megatron_vlm.data.micro_batch import micro_batch
from megatron_vlm.data.sampler import PackBatchSampler
from megatron_vlm.data.stream import PackStream
from megatron_vlm.formats.dataset import DatasetFormatError

IMAGE_PAD = 151655


def test_pixel_values_equal_qwen2vl_image_processor(built):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    prefix, pool, _ = built
    ds = BuiltDataset(prefix, pool=pool)
    batch, raw = micro_batch([ds[0], ds[1]], ds.geometry), [ds.read_pack(0), ds.read_pack(1)]
    processor = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)
    records = np.concatenate([r["images"] for r in raw])
    assert len({int(k) for k in records[:, 2]}) < len(records)  # repeated pages are in the test
    images = [pool.page_image(pool.documents[o]["doc_id"], int(n)) for o, n in records[:, :2]]
    expected = processor(images=images, return_tensors="np")
    np.testing.assert_array_equal(batch["image_grid_thw"].numpy(), expected["image_grid_thw"])
    np.testing.assert_allclose(batch["pixel_values"].numpy(), expected["pixel_values"], rtol=0, atol=2e-6)


def test_qwen3vl_dataset_of_a_qwen25vl_pool_resizes_pages_like_its_processor(built_qwen3vl):
    """A pool rendered for Qwen2.5-VL (28-pixel multiples) feeds Qwen3-VL: each page is resized at load time to
    what Qwen3-VL's image processor (patch 16, mean = std = 0.5) makes of the stored page, within the pool's
    pixel bounds; the dataset's token counts follow its 32-pixel grid."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    prefix, pool = built_qwen3vl
    ds = BuiltDataset(prefix, pool=pool)
    assert ds.family == "qwen3_vl" and ds.geometry.patch_size == 16
    batch = micro_batch([ds[0], ds[1]], ds.geometry)
    records = np.concatenate([ds.read_pack(k)["images"] for k in (0, 1)])
    images = [pool.page_image(pool.documents[o]["doc_id"], int(n)) for o, n in records[:, :2]]
    assert any(image.size[0] % 32 or image.size[1] % 32 for image in images)  # resizing is exercised
    processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                         min_pixels=3136, max_pixels=12845056)
    expected = processor(images=images, return_tensors="np")
    np.testing.assert_array_equal(batch["image_grid_thw"].numpy(), expected["image_grid_thw"])
    np.testing.assert_allclose(batch["pixel_values"].numpy(), expected["pixel_values"], rtol=0, atol=2e-6)
    ids = batch["input_ids"].numpy()
    assert (ids == IMAGE_PAD).sum() == expected["image_grid_thw"].prod(1).sum() // 4


def test_datasets_of_different_families_are_not_blended(built, built_qwen3vl):
    with pytest.raises(DatasetFormatError, match="different model families"):
        build_data_loader([built[0], built_qwen3vl[0]], 1, pool=built[1], num_workers=0)


def _hf_rope_index(input_ids: np.ndarray, grids: np.ndarray) -> np.ndarray:
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config

    model = Qwen2_5_VLModel(tiny_qwen25vl_config(num_layers=1, vision_depth=1, fullatt_block_indexes=(0,)))
    ids = torch.as_tensor(input_ids, dtype=torch.long)[None]
    positions, _ = model.get_rope_index(ids, mm_token_type_ids=(ids == IMAGE_PAD).int(),
                                        image_grid_thw=torch.as_tensor(grids))
    return positions[:, 0].numpy()


def test_micro_batch_matches_transformers_and_targets(built, qwen_tokenizer):
    """Two rows become one stream: each sample padded to a multiple of 4 (CP=2), the stream to 8; real
    boundaries in cu_seqlens, padded ones in cu_seqlens_padded; positions as transformers computes them."""
    from megatron_vlm.formats.dataset import PAD_ID
    from megatron_vlm.parallel import TokenPadding

    prefix, pool, rows = built
    loader = build_data_loader(prefix, 2, pool=pool, num_workers=0, total_samples=2, shuffle=False,
                               padding=TokenPadding(sample=4, stream=8))
    (batch,) = list(loader)
    packs = [BuiltDataset(prefix, pool=pool).read_pack(k) for k in (0, 1)]
    lengths = np.concatenate([p["sample_lengths"] for p in packs])
    padded = [-(-n // 4) * 4 for n in lengths]
    t = -(-sum(padded) // 8) * 8
    assert batch["input_ids"].shape == (1, t) and batch["position_ids"].shape == (3, 1, t)
    assert batch["real_tokens"] == sum(lengths) < t < 2 * 512  # no padding between rows, not seq_length
    assert batch["cu_seqlens"].tolist() == [0, *np.cumsum(lengths).tolist()]
    starts = [0, *np.cumsum(padded).tolist()]
    assert batch["cu_seqlens_padded"].tolist() == starts[:-1] + [t]
    assert batch["pixel_values"].shape == (int(batch["image_grid_thw"].prod(1).sum()), 1176)
    ids = batch["input_ids"][0].numpy()
    labels = batch["labels"][0].numpy()
    mask = batch["loss_mask"][0].numpy()
    pos = batch["position_ids"][:, 0].numpy()
    grids = batch["image_grid_thw"].numpy()
    tokens = np.concatenate([p["tokens"] for p in packs])
    used = 0
    answers = []
    for k, (lo, n) in enumerate(zip(starts[:-1], lengths)):
        hi = lo + n
        sample = ids[lo:hi]
        np.testing.assert_array_equal(sample, tokens[sum(lengths[:k]):sum(lengths[:k + 1])])
        end = batch["cu_seqlens_padded"][k + 1].item()
        assert (ids[hi:end] == PAD_ID).all() and not mask[hi - 1:end].any()  # padding: no targets
        n_img = len(np.flatnonzero(np.diff(np.concatenate([[0], sample == IMAGE_PAD])) == 1))
        np.testing.assert_array_equal(pos[:, lo:hi], _hf_rope_index(sample, grids[used:used + n_img]))
        used += n_img
        np.testing.assert_array_equal(labels[lo:hi - 1], sample[1:])  # next token within the sample
        answers.append(qwen_tokenizer.decode(labels[lo:hi][mask[lo:hi] == 1]))
    assert used == len(grids)
    expected = {r["answer"] + "<|im_end|>" for r in rows}
    assert answers and all(a in expected for a in answers)


def test_sampler_order_resume_and_shards():
    stream = PackStream([10], seed=5)
    full = [stream(p)[1] for batch in PackBatchSampler(2, total_samples=30) for p in batch]
    assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))
    assert full[:10] != full[10:20] != list(range(10))  # a new seeded order every epoch
    assert full != [PackStream([10], seed=6)(p)[1] for p in range(30)]
    # resume from consumed samples
    assert [p for b in PackBatchSampler(2, consumed_samples=12, total_samples=30) for p in b] == list(range(12, 30))
    # data-parallel ranks take interleaved slices of every global step, together the whole stream
    ranks = [list(PackBatchSampler(2, dp_rank=r, dp_size=3, consumed_samples=6, total_samples=30)) for r in range(3)]
    merged = [p for step in zip(*ranks) for batch in step for p in batch]
    assert merged == list(range(6, 30))
    assert len(ranks[0]) == 4 == len(PackBatchSampler(2, dp_rank=0, dp_size=3, consumed_samples=6, total_samples=30))
    with pytest.raises(ValueError, match="multiple of"):
        PackBatchSampler(2, dp_size=3, consumed_samples=4)


def test_blended_stream_follows_the_weights():
    stream = PackStream([4, 7], [3.0, 1.0], seed=2, total=400)
    picks = [stream(p) for p in range(400)]
    assert sum(d == 0 for d, _ in picks) == 300  # megatron-core's blending: exact shares at every multiple of 4
    assert all(sum(d == 0 for d, _ in picks[:k]) == 3 * k // 4 for k in (4, 40, 200))
    first = [k for d, k in picks if d == 0][:4]
    assert sorted(first) == list(range(4))  # each dataset in its own seeded epochs
    with pytest.raises(ValueError, match="total"):
        PackStream([4, 7], [3.0, 1.0])


def test_worker_processes_give_the_same_batches(built):
    prefix, pool, _ = built
    kw = dict(pool=pool, seed=3, total_samples=4, consumed_samples=2)
    serial = list(build_data_loader(prefix, 1, num_workers=0, **kw))
    parallel = list(build_data_loader(prefix, 1, num_workers=2, **kw))
    assert len(serial) == len(parallel) == 2
    for a, b in zip(serial, parallel):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_workers_outlive_the_exit_signals_and_stop_when_told(built):
    """SLURM signals every process of a step: the workers ignore the trainer's exit signals (the rank saves
    on them), and ``stop_workers`` still ends them (multiprocessing's exit handler could not: it sends
    SIGTERM and then waits)."""
    import os
    import signal
    import time

    import psutil

    from megatron_vlm.data.loader import stop_workers

    prefix, pool, _ = built
    before = {p.pid for p in psutil.Process().children()}
    loader = build_data_loader(prefix, 1, pool=pool, seed=3, total_samples=4, num_workers=1,
                               worker_ignored_signals=["SIGTERM", "SIGUSR1"])
    iterator = iter(loader)
    next(iterator)
    workers = [p for p in psutil.Process().children() if p.pid not in before]
    assert len(workers) == 1
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        os.kill(workers[0].pid, sig)
    time.sleep(1.0)
    assert workers[0].is_running() and workers[0].status() != psutil.STATUS_ZOMBIE
    next(iterator)  # still serving batches
    stop_workers(iterator)
    assert not workers[0].is_running()


def test_changed_pool_or_missing_files_are_clear_errors(built, tmp_path):
    prefix, pool, _ = built
    manifest = pool.pool_dir / "manifest.jsonl"
    original = manifest.read_text()
    try:
        manifest.write_text(original + json.dumps({"doc_id": "x"}) + "\n")
        with pytest.raises(DatasetFormatError, match="is not the one"):
            BuiltDataset(prefix)
    finally:
        manifest.write_text(original)
    with pytest.raises(DatasetFormatError, match="not a complete built dataset"):
        BuiltDataset(tmp_path / "nothing")


def test_stats_from_files(built, tmp_path, capsys, qwen_tokenizer):
    from longvlm import api
    from longvlm.cli import main

    prefix, pool, rows = built
    meta = json.loads(prefix.with_suffix(".json").read_text())
    stats = api.stats(prefix=str(prefix), plot=str(tmp_path / "h.png"))
    mix = meta["report"]["mixture"]["tasks"]
    assert {k: (v["samples"], v["tokens"]) for k, v in stats["tasks"].items()} == \
        {k: (v["samples"], v["tokens"]) for k, v in mix.items()}
    assert stats["fill_ratio"] == pytest.approx(meta["report"]["packing"]["fill_ratio"])
    assert sum(b["examples"] for b in stats["histogram"]) == stats["samples"]
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ds = BuiltDataset(prefix, pool=pool, decode_images=False)
    answer_tokens: dict[str, int] = {}
    for p in range(len(ds)):
        for task, _, line, _, _ in ds.read_pack(p)["samples"]:
            name = meta["task_names"][task]
            answer_tokens[name] = answer_tokens.get(name, 0) + len(qwen_tokenizer(rows[line - 1]["answer"]).input_ids)
    assert {k: v["answer_tokens"] for k, v in stats["tasks"].items()} == answer_tokens
    assert main(["stats", str(prefix), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["total_tokens"] == stats["total_tokens"] and 0 < printed["image_token_share"] < 1


def test_stats_table_figures_by_hand_and_two_datasets_compared(built, tmp_path, capsys, qwen_tokenizer_dir):
    from longvlm import api
    from longvlm.cli import main
    from preprocess.dataset.config import BuildConfig
    from preprocess.dataset.run import build

    prefix, pool, _ = built
    ds = BuiltDataset(prefix, pool=pool, decode_images=False)
    lengths = np.sort(np.concatenate([ds.read_pack(i)["sample_lengths"] for i in range(len(ds))]))
    stats = api.stats(prefix=str(prefix))
    # bins follow the 512-token rows: the paper's 128K bins x 512/131072; long = 100,000 x 512/131072
    assert [b["lo"] for b in stats["histogram"]] == [0, 32, 64, 128, 256, 391]
    assert stats["long_threshold"] == 391 and stats["long_share"] == pytest.approx((lengths >= 391).mean())
    assert stats["p50"] == lengths[int(np.ceil(0.5 * len(lengths))) - 1]  # the inverted-CDF percentile
    assert stats["p90"] == lengths[int(np.ceil(0.9 * len(lengths))) - 1]
    assert stats["mean_length"] == pytest.approx(lengths.mean())
    assert sum(b["examples"] for b in stats["histogram"]) == len(lengths) > 0
    assert sum(sum(t["histogram"]) for t in stats["tasks"].values()) == len(lengths)

    median = int(np.median(lengths)) + 1
    hist = tmp_path / "hist.json"  # nine in ten examples from the longer half
    hist.write_text(json.dumps({"edges": [0, median, 513], "fractions": [0.1, 0.9]}))
    cfg = BuildConfig(tasks=[str(prefix.parent / "tasks.jsonl")], pool=str(prefix.parent / "pool"),
                      tokenizer=str(qwen_tokenizer_dir), output=str(tmp_path / "biased"), seq_length=512,
                      token_budget=12000, progress=False, max_repeats=1000, length_dist=str(hist))
    build(cfg, pool=pool)
    native, biased = api.stats(prefix=[str(prefix), str(tmp_path / "biased")], plot=str(tmp_path / "both.png"))
    assert biased["p50"] >= median > native["p50"] and biased["mean_length"] > native["mean_length"] + 10
    assert all(b["target"] is None for b in biased["histogram"])  # its target has other bins than the table's
    assert (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["stats", str(prefix), str(tmp_path / "biased")]) == 0
    table = capsys.readouterr().out
    assert "biased" in table and f"{biased['p50'] / 1024:.1f}K" in table.split("p50 / p90 length")[1].splitlines()[0]
