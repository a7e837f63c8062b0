"""Short-context instruction data for ``longvlm build --short-data``, read in the formats it is published in.

- LLaVA-style JSON (a list) or JSONL (one record a line)::

      {"id": "...", "image": "coco/0001.jpg" (or a list of paths; absent for text-only),
       "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"}, {"from": "gpt", "value": "..."}]}

  image paths are relative to ``--short-image-dir`` (default: the file's folder);
- Hugging Face ``datasets`` saved as Parquet with embedded image bytes (the layout of
  LLaVA-OneVision-Data): columns ``id``, ``image`` (a struct ``{bytes, path}``, or ``images``: a list
  of them) and ``conversations`` (a list of ``{from, value}``). Read batch by batch with pyarrow: a
  file is never loaded whole.

Every ``<image>`` placeholder of a human turn is one image, in order. Images are resized as the model
family's processor does (its ``ImageGeometry.smart_resize``, bicubic) and take its
``llm_tokens(h, w)`` tokens. Records that cannot be used are skipped with a counted reason
(:data:`SKIP_REASONS`), never silently. The build reads the files twice: once to measure every
record, and once to encode the images of the records it selected (:func:`encode_images`).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megatron_vlm.models.geometry import ImageGeometry
from megatron_vlm.utils.jsonl import read_jsonl_objects
from preprocess.dataset.errors import BuildError

FORMATS = {".json": "llava-json", ".jsonl": "llava-jsonl", ".parquet": "parquet"}
SKIP_REASONS = ("missing_image", "unreadable_image", "placeholder_mismatch", "empty_turn", "bad_turns",
                "special_token_text", "too_long")
PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PARQUET_BATCH = 256  # rows decoded at a time


class Skip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class RawRecord:
    """One record as read: where it is, its turns, and a loader of each image's encoded bytes."""

    key: tuple[int, int]  # (file index, record index)
    where: str
    turns: object
    images: list[Callable[[], bytes]]


@dataclass
class ShortSample:
    key: tuple[int, int]
    where: str
    ids: np.ndarray
    targets: np.ndarray
    sizes: list[tuple[int, int]]  # smart-resized (height, width) of each image, in order
    image_tokens: np.ndarray  # int64, LLM tokens of each image at the family's geometry


@dataclass
class ShortData:
    samples: list[ShortSample]
    records: int
    skipped: Counter = field(default_factory=Counter)


def _file_loader(path: Path) -> Callable[[], bytes]:
    def load() -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise Skip("missing_image", str(path)) from None
        except OSError as err:
            raise Skip("unreadable_image", f"{path}: {err}") from None
    return load


def _bytes_loader(value) -> Callable[[], bytes]:
    def load() -> bytes:
        data = value.get("bytes") if isinstance(value, dict) else value
        if not data:
            raise Skip("missing_image", "no image bytes in the row")
        return data
    return load


def _llava_records(path: Path, file_index: int, image_dir: Path) -> Iterator[RawRecord]:
    if path.suffix == ".jsonl":
        rows = ((where, number, obj) for where, number, obj in read_jsonl_objects(path, BuildError))
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BuildError(f"--short-data {path}: not valid JSON ({err})") from None
        if not isinstance(data, list):
            raise BuildError(f"--short-data {path}: a LLaVA JSON file is a list of records")
        rows = ((f"{path}[{i}]", i, obj) for i, obj in enumerate(data))
    for where, number, obj in rows:
        if not isinstance(obj, dict):
            raise BuildError(f"{where}: expected a JSON object")
        images = obj.get("image") or []
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise BuildError(f"{where}: 'image' must be a path or a list of paths")
        yield RawRecord((file_index, number), where, obj.get("conversations"),
                        [_file_loader(image_dir / name) for name in images])


def _parquet_records(path: Path, file_index: int) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise BuildError(f"--short-data {path}: not a Parquet file ({err})") from None
    names = parquet.schema_arrow.names
    if "conversations" not in names:
        raise BuildError(f"--short-data {path}: no 'conversations' column (columns: {', '.join(names)}); "
                         "expected the LLaVA-OneVision-Data layout: id, image, conversations")
    image_column = next((c for c in ("image", "images") if c in names), None)
    columns = ["conversations"] + ([image_column] if image_column else [])
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH, columns=columns):
        for obj in batch.to_pylist():
            images = obj.get(image_column) if image_column else None
            images = [] if images is None else images if isinstance(images, list) else [images]
            yield RawRecord((file_index, row), f"{path}[row {row}]", obj["conversations"],
                            [_bytes_loader(value) for value in images])
            row += 1


def raw_records(paths: list[str], image_dir: str | None) -> Iterator[RawRecord]:
    """Every record of every file, in file order."""
    for file_index, name in enumerate(paths):
        path = Path(name)
        if not path.is_file():
            raise BuildError(f"--short-data {path}: file not found")
        if path.suffix not in FORMATS:
            raise BuildError(f"--short-data {path}: unknown format; expected LLaVA .json / .jsonl or a "
                             "Hugging Face dataset saved as .parquet")
        if path.suffix == ".parquet":
            yield from _parquet_records(path, file_index)
        else:
            yield from _llava_records(path, file_index, Path(image_dir) if image_dir else path.parent)


def chat_messages(turns) -> list[dict]:
    """LLaVA turns -> chat messages (images as ``{"type": "image"}`` parts where the placeholders are)."""
    if not isinstance(turns, list) or not turns:
        raise Skip("bad_turns", "no conversations")
    messages = []
    for turn in turns:
        role = ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
        value = turn.get("value") if isinstance(turn, dict) else None
        if role is None:
            raise Skip("bad_turns", f"unknown speaker {turn.get('from') if isinstance(turn, dict) else turn!r}")
        if not isinstance(value, str) or not value.replace(PLACEHOLDER, "").strip():
            raise Skip("empty_turn", f"an empty {role} turn")
        if role == "user" and PLACEHOLDER in value:
            parts = []
            for i, text in enumerate(value.split(PLACEHOLDER)):
                if i:
                    parts.append({"type": "image"})
                    text = text[1:] if text.startswith("\n") else text
                if text.strip():
                    parts.append({"type": "text", "text": text})
            messages.append({"role": role, "content": parts})
        elif PLACEHOLDER in value:
            raise Skip("placeholder_mismatch", f"an image placeholder in a {role} turn")
        else:
            messages.append({"role": role, "content": value.strip()})
    roles = [m["role"] for m in messages]
    roles = roles[1:] if roles[0] == "system" else roles
    if not roles or roles != ["user", "assistant"] * (len(roles) // 2):
        raise Skip("bad_turns", "turns must alternate user/assistant and end with the assistant")
    return messages


def open_image(data: bytes, where: str):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise Skip("unreadable_image", f"{where}: {err}") from None
    return image


def resized_size(image, where: str, geometry: ImageGeometry) -> tuple[int, int]:
    try:
        return geometry.smart_resize(image.height, image.width)
    except ValueError as err:
        raise Skip("unreadable_image", f"{where}: {err}") from None


def _measure(raw: RawRecord, render, geometry: ImageGeometry) -> ShortSample:
    messages = chat_messages(raw.turns)
    placeholders = sum(1 for m in messages if isinstance(m["content"], list)
                       for part in m["content"] if part["type"] == "image")
    if placeholders and not raw.images:
        raise Skip("missing_image", f"{placeholders} placeholders and no image")
    if placeholders != len(raw.images):
        raise Skip("placeholder_mismatch", f"{placeholders} placeholders, {len(raw.images)} images")
    sizes = [resized_size(open_image(load(), raw.where), raw.where, geometry) for load in raw.images]
    ids, targets = render(messages, len(sizes))
    tokens = np.asarray([geometry.llm_tokens(h, w) for h, w in sizes], dtype=np.int64)
    return ShortSample(raw.key, raw.where, ids, targets, sizes, tokens)


def read_short_data(paths: list[str], image_dir: str | None, renderer, seq_length: int,
                    geometry: ImageGeometry) -> ShortData:
    """Measure every record (the images decoded, not kept) at the model family's ``geometry``; skipped ones
    counted by reason."""
    out = ShortData([], 0)
    texts = renderer.has_special_text

    def render(messages, num_images):
        for m in messages:
            parts = [m["content"]] if isinstance(m["content"], str) else [p.get("text", "") for p in m["content"]]
            if any(texts(p) for p in parts):
                raise Skip("special_token_text")
        return renderer.render_conversation(messages, num_images)

    for raw in raw_records(paths, image_dir):
        out.records += 1
        try:
            sample = _measure(raw, render, geometry)
            length = len(sample.ids) - len(sample.sizes) + int(sample.image_tokens.sum())
            if length > seq_length:
                raise Skip("too_long", f"{length} tokens")
        except Skip as skip:
            out.skipped[skip.reason] += 1
            continue
        out.samples.append(sample)
    return out


def encode_images(paths: list[str], image_dir: str | None, wanted: dict[tuple[int, int], list[tuple[int, int]]],
                  add_image: Callable[[bytes], int]) -> dict[tuple[int, int], list[int]]:
    """Second pass: resize and PNG-encode the images of the ``wanted`` records (key -> their sizes)
    and hand each to ``add_image``; returns key -> the index ``add_image`` gave each image."""
    from PIL import Image

    indices: dict[tuple[int, int], list[int]] = {}
    for raw in raw_records(paths, image_dir):
        if raw.key not in wanted:
            continue
        indices[raw.key] = []
        for load, (height, width) in zip(raw.images, wanted[raw.key]):
            image = open_image(load(), raw.where).convert("RGB").resize((width, height), Image.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            indices[raw.key].append(add_image(buffer.getvalue()))
        if len(indices) == len(wanted):
            break
    missing = set(wanted) - set(indices)
    if missing:
        raise BuildError(f"--short-data changed while building: record {sorted(missing)[0]} is gone")
    return indices
