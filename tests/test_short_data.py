"""``longvlm build --short-data``: LLaVA JSON/JSONL and Parquet instruction data, counted skips, the
family's resize, multi-turn targets, the token share, and the loader reading the images back."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers.build_fakes import FakePool, write_tasks
from PIL import Image

from longvlm.cli import main as cli_main
from megatron_vlm.data.dataset import BuiltDataset
from megatron_vlm.formats import dataset as fmt
from preprocess.dataset.config import BuildConfig
from preprocess.dataset.errors import BuildError
from preprocess.dataset.run import build

IMAGE_PAD, VISION_START = 151655, 151652


def png(width: int, height: int, value: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, 200 - value, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def conversation(*turns: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]


# record id -> (images as (width, height), turns, skip reason or None)
RECORDS = {
    "one-image": ([(100, 60)], conversation("<image>\nWhat colour is it?", "Mostly red."), None),
    "two-turns": ([], conversation("Say hi.", "Hi.", "And bye?", "Bye."), None),
    "two-images": ([(56, 56), (30, 90)], conversation("<image><image>Which is taller?", "The second."), None),
    "missing": (["gone.png"], conversation("<image>What is it?", "A cat."), "missing_image"),
    "garbage": (["garbage.png"], conversation("<image>What is it?", "A dog."), "unreadable_image"),
    "mismatch": ([(56, 56)], conversation("<image><image>Compare.", "Same."), "placeholder_mismatch"),
    "empty": ([], conversation("Anything?", "  "), "empty_turn"),
    "too-long": ([(600, 600)], conversation("<image>Describe.", "A square."), "too_long"),  # 441 image tokens
}


def write_llava(folder: Path, suffix: str) -> Path:
    """The records as LLaVA JSON (a list) or JSONL, with image files beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "garbage.png").write_bytes(b"not an image at all")
    records = []
    for rid, (images, turns, _) in RECORDS.items():
        names = []
        for k, image in enumerate(images):
            if isinstance(image, str):
                names.append(image)
            else:
                names.append(f"{rid}-{k}.png")
                (folder / names[-1]).write_bytes(png(*image))
        record = {"id": rid, "conversations": turns}
        if names:
            record["image"] = names[0] if len(names) == 1 else names
        records.append(record)
    path = folder / f"llava{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_parquet(path: Path) -> Path:
    """The records as a Hugging Face dataset saved to Parquet (LLaVA-OneVision-Data's columns: one image
    struct {bytes, path} per row, so the two-image record is left out; the missing image is a null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for rid, (images, turns, _) in RECORDS.items():
        if len(images) > 1:
            continue
        image = None
        if images and not isinstance(images[0], str):
            image = {"bytes": png(*images[0]), "path": f"{rid}.png"}
        elif images and images[0] == "garbage.png":
            image = {"bytes": b"not an image at all", "path": "garbage.png"}
        rows.append({"id": rid, "image": image, "conversations": turns, "data_source": "test"})
    schema = pa.schema([("id", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
                        ("data_source", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=3)
    return path


@pytest.fixture
def long_inputs(tmp_path):
    sizes = {f"{i:064x}": [(56, 84)] * 3 for i in range(4)}
    pool = FakePool(tmp_path / "pool", sizes).register()
    rows = [{"task": t, "doc_id": d, "question": f"On page 1 of doc {i}, what is {t}?", "answer": f"Answer {i}."}
            for i, d in enumerate(sizes) for t in ("extract-single", "extract-multi", "reasoning")]
    return pool, write_tasks(tmp_path / "tasks.jsonl", rows)


def _build(tmp_path, pool, tasks, tokenizer, short, **kw):
    options = dict(tasks=[str(tasks)], pool=str(tmp_path / "pool"), tokenizer=str(tokenizer),
                   output=str(tmp_path / "out" / "data"), seq_length=400, token_budget=20000, progress=False,
                   max_repeats=1000, short_data=[str(p) for p in short], short_share=0.2)
    options.update(kw)
    return build(BuildConfig(**options), pool=pool)


def test_llava_json_and_parquet_short_data_mixed_in(tmp_path, long_inputs, qwen_tokenizer_dir, qwen_tokenizer):
    pool, tasks = long_inputs
    short = [write_llava(tmp_path / "llava", ".json"), write_parquet(tmp_path / "ov.parquet")]
    result = _build(tmp_path, pool, tasks, qwen_tokenizer_dir, short)
    report = result.report["short_data"]
    # every bad record skipped with its reason: JSON has one of each; Parquet lacks the two-image one
    assert report["records"] == len(RECORDS) * 2 - 1
    assert report["skipped"] == {"missing_image": 2, "unreadable_image": 2, "placeholder_mismatch": 2,
                                 "empty_turn": 2, "too_long": 2}
    assert report["usable"] == 5
    assert abs(report["achieved_share"] - 0.2) <= 0.01

    data = BuiltDataset(result.prefix, pool=pool)
    meta, short_code = data.meta, data.meta["task_names"].index("short")
    seen = set()
    for index in range(len(data)):
        raw = data.read_pack(index)
        item = data[index]
        starts = np.concatenate([[0], np.cumsum(raw["sample_lengths"])])
        image_at = 0  # the pack's image records are its samples' images in order
        for s, fields in enumerate(raw["samples"]):
            ids = raw["tokens"][starts[s]:starts[s + 1]]
            targets = raw["targets"][starts[s]:starts[s + 1]].astype(bool)
            first, image_at = image_at, image_at + int((ids == VISION_START).sum())
            if fields[0] != short_code:
                assert (raw["images"][first:image_at, 0] >= 0).all()
                continue
            file_index, row = int(fields[1]), int(fields[2])
            assert file_index in (1, 2)  # after the one tasks file: the JSON, then the Parquet file
            rid = [r for r in RECORDS if file_index == 1 or len(RECORDS[r][0]) < 2][row]
            seen.add((file_index, rid))
            images, turns, _ = RECORDS[rid]
            answers = [t["value"] for t in turns if t["from"] == "gpt"]
            assert qwen_tokenizer.decode(ids[targets]) == "".join(a + "<|im_end|>" for a in answers)
            # by hand (h x w): 60x100 -> 56x112 (nearest multiples of 28) = 8 tokens; 56x56 -> 4 tokens;
            # 90x30 -> 84x28 = 2,352 px < min_pixels 3,136, so scaled up by sqrt(3136/2700) and rounded up:
            # ceil(3.46)*28 x ceil(1.15)*28 = 112x56 = 8 tokens
            expected = {"one-image": [(56, 112)], "two-turns": [], "two-images": [(56, 56), (112, 56)]}[rid]
            assert int((ids == IMAGE_PAD).sum()) == sum(h * w // 784 for h, w in expected)
            records = raw["images"][first:image_at]
            assert len(records) == len(expected) and (records[:, 0] == fmt.SHORT_IMAGE).all()
            for k, (h, w) in enumerate(expected):
                assert item["pages"][first + k].shape == (h, w, 3)
                assert tuple(records[k, 3:5]) == (h // 14, w // 14)
    assert seen == {(1, "one-image"), (1, "two-turns"), (1, "two-images"), (2, "one-image"), (2, "two-turns")}
    assert meta["inputs"]["short_data"][1]["sha256"]


def test_short_share_is_hit_within_one_percent_for_other_shares(tmp_path, long_inputs, qwen_tokenizer_dir):
    pool, tasks = long_inputs
    short = [write_llava(tmp_path / "llava", ".jsonl")]
    for share in (0.05, 0.5):
        result = _build(tmp_path, pool, tasks, qwen_tokenizer_dir, short, short_share=share, token_budget=40000)
        mix = result.report["mixture"]["tasks"]
        assert abs(mix["short"]["tokens"] / result.report["mixture"]["tokens"] - share) <= 0.01
        long_shares = [mix[t]["tokens"] for t in ("extract-single", "extract-multi", "reasoning")]
        assert abs(long_shares[0] / sum(long_shares) - 0.4) <= 0.02


def test_short_data_options_fail_clearly(tmp_path, long_inputs, qwen_tokenizer_dir, capsys):
    pool, tasks = long_inputs
    bad = tmp_path / "bad.parquet"
    bad.write_text("nope")
    with pytest.raises(BuildError, match="bad.parquet: not a Parquet file"):
        _build(tmp_path, pool, tasks, qwen_tokenizer_dir, [bad])
    csv = tmp_path / "data.csv"
    csv.write_text("a,b")
    with pytest.raises(BuildError, match="unknown format"):
        _build(tmp_path, pool, tasks, qwen_tokenizer_dir, [csv])
    args = ["build", str(tasks), "--pool", str(tmp_path / "pool"), "--tokenizer", str(qwen_tokenizer_dir),
            "-o", str(tmp_path / "cli" / "d")]
    assert cli_main(args + ["--short-share", "0.1"]) == 2
    assert "--short-share and --short-data go together" in capsys.readouterr().err
    assert cli_main(args + ["--short-data", str(csv), "--short-share", "1.5"]) == 2
    assert "--short-share must be in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_short_share_one_builds_short_data_only(tmp_path, long_inputs, qwen_tokenizer_dir):
    """An SFT stage's dataset: --short-share 1 takes only short samples (the tasks are read, not used)."""
    pool, tasks = long_inputs
    result = _build(tmp_path, pool, tasks, qwen_tokenizer_dir, [write_llava(tmp_path / "llava", ".json")],
                    short_share=1.0, token_budget=3000)
    assert set(result.report["mixture"]["tasks"]) == {"short"}
    data = BuiltDataset(result.prefix, pool=pool)
    codes = {int(c) for i in range(len(data)) for c in data.read_pack(i)["samples"][:, 0]}
    assert codes == {data.meta["task_names"].index("short")}
    assert abs(result.report["mixture"]["tokens"] - 3000) / 3000 < 0.01
