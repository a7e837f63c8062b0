"""Every reader of a user's file, fed arbitrary bytes (hypothesis): random bytes, truncations and
overwrites of a valid file, JSON of any shape, bytes that are not UTF-8, nesting thousands deep.
Each either reads the file or raises the project's error (``LongVLMError``) with one line that names
the file; never another exception, never a hang.

The readers are one table (``READERS``): a reader added later is one more row. Examples are drawn
deterministically (``derandomize``), so CI sees the same cases every run.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.cli_contract import CaseTimeout, time_limit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_vlm.errors import LongVLMError

LIMIT_S = 30  # a reader takes milliseconds; this only catches a hang
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
SPECIAL = (b"", b"\xff\xfe\x00\x80", b"[" * 20000, b'{"a":' * 20000 + b"1" + b"}" * 20000, b"9" * 10000,
           b"null", b"[]", b"{}", b'"text"', b"- a\n- b\n", b"key: [unclosed\n", b"\x00" * 64, b"a: 1\na: 2\n")


def damaged(valid: bytes) -> st.SearchStrategy[bytes]:
    """Bytes a damaged or hostile file may hold, most of them near ``valid``."""
    size = max(1, len(valid))
    return st.one_of(
        st.binary(max_size=600),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),  # cut off
        st.tuples(st.integers(0, size - 1), st.binary(min_size=1, max_size=16)).map(
            lambda t: valid[:t[0]] + t[1] + valid[t[0] + len(t[1]):]),  # overwritten in place
        st.sampled_from(SPECIAL),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        JSON_VALUES.map(lambda v: valid.rstrip(b"\n") + b"\n" + json.dumps(v).encode() + b"\n"),  # one more line
    )


@dataclass(frozen=True)
class Reader:
    """``read(path)`` reads the user's file at ``path`` (inside a copy made by ``make(tmp, inputs)``)."""

    name: str
    make: Callable[[Path, dict], Path]  # a valid input in tmp; returns the file the examples overwrite
    read: Callable[[Path], object]
    after_write: Callable[[Path], None] = lambda path: None  # e.g. record the new file's checksum
    names_key: str | None = None  # a pattern: a message naming such a key (not the file) names the culprit too


def _copy(source: Path, tmp: Path, name: str) -> Path:
    target = tmp / source.name
    if not target.exists():
        shutil.copytree(source, target)
    return target / name


def _write(content: str, tmp: Path, name: str) -> Path:
    path = tmp / name
    path.write_text(content)
    return path


def _read_tasks(path):
    from megatron_vlm.formats.tasks import read_tasks

    return list(read_tasks([str(path)]))


def _read_predictions(path):
    from evaluation.score import read_predictions

    return read_predictions(path)


def _read_questions(path):
    from evaluation.docqa import read_questions

    return read_questions(path)


def _open_pool(path):
    from megatron_vlm.formats.pool import Pool

    return Pool.open(path.parent)


def _rerecord(path: Path) -> None:
    """pool.json records each file's size and checksum: keep them true, so that the manifest is parsed."""
    from megatron_vlm.formats.integrity import file_record

    info_path = path.parent / "pool.json"
    info = json.loads(info_path.read_text())
    info["files"][path.name] = file_record(path)
    info_path.write_text(json.dumps(info))


def _open_dataset(path):
    from megatron_vlm.formats.dataset import open_dataset

    return open_dataset(str(path)[: -len(".json")])


def _load_recipe(path):
    from training.config import load_recipe

    return load_recipe(path)


def _hf_config(path):
    from megatron_vlm.models.registry import read_arch

    return read_arch(path.parent)


def _tokenizer(path):
    from preprocess.dataset.run import load_tokenizer

    return load_tokenizer(str(path.parent))


def _megatron(path):
    from megatron_vlm.formats.checkpoint import MegatronCheckpoint

    return MegatronCheckpoint.open(path.parent if path.name.endswith(".txt") else path.parent.parent)


def _length_target(path):
    from preprocess.dataset.lengths import load_length_target

    return load_length_target(str(path))


def _exclude_hashes(path):
    from preprocess.pool.build import load_exclude_hashes

    return load_exclude_hashes(str(path))


def _meg_meta(tmp: Path, i: dict) -> Path:
    root = _copy(i["megatron"], tmp, "")
    (iteration,) = root.glob("iter_*")
    return iteration / "longvlm.json"


READERS = [
    Reader("tasks JSONL", lambda tmp, i: _write(i["tasks"].read_text(), tmp, "tasks.jsonl"), _read_tasks),
    Reader("predictions JSONL", lambda tmp, i: _write(
        '{"question": "q", "answer": "4", "answer_format": "Int", "prediction": "4"}\n', tmp, "p.jsonl"),
        _read_predictions),
    Reader("docqa questions JSONL", lambda tmp, i: _write(
        '{"doc": "a.pdf", "question": "q?", "answer": "a", "answer_format": "Str"}\n', tmp, "q.jsonl"),
        _read_questions),
    Reader("pool manifest.jsonl", lambda tmp, i: _copy(i["pool"], tmp, "manifest.jsonl"), _open_pool, _rerecord),
    Reader("pool.json", lambda tmp, i: _copy(i["pool"], tmp, "pool.json"), _open_pool),
    Reader("built dataset DATA_PREFIX.json", lambda tmp, i: _copy(i["data"].parent, tmp, "data.json"), _open_dataset),
    Reader("training recipe YAML", lambda tmp, i: _write(
        (Path(__file__).parents[1] / "training" / "recipes" / "tiny-cpu.yaml").read_text(), tmp, "r.yaml"),
        _load_recipe, names_key=r"\b(model|parallel|data|train|optimizer|checkpoint|logging|guard)\.\w+"),
    Reader("HF config.json", lambda tmp, i: _copy(i["hf"], tmp, "config.json"), _hf_config),
    Reader("tokenizer tokenizer_config.json", lambda tmp, i: _copy(i["tokenizer"], tmp, "tokenizer_config.json"),
           _tokenizer),
    Reader("tokenizer tokenizer.json", lambda tmp, i: _copy(i["tokenizer"], tmp, "tokenizer.json"), _tokenizer),
    Reader("Megatron checkpoint longvlm.json", _meg_meta, _megatron),
    Reader("Megatron checkpoint tracker", lambda tmp, i: _copy(
        i["megatron"], tmp, "latest_checkpointed_iteration.txt"), _megatron),
    Reader("build --length-dist JSON", lambda tmp, i: _write(
        '{"edges": [0, 1000, 100000], "fractions": [0.5, 0.5]}', tmp, "lengths.json"), _length_target),
    Reader("pool --exclude-hashes", lambda tmp, i: _write("0" * 64 + "  a.pdf\n# comment\n", tmp, "x.txt"),
           _exclude_hashes),
]


@pytest.fixture(scope="module")
def inputs(train_inputs, small_pool, qwen_tokenizer_dir, convert_to_megatron, tmp_path_factory) -> dict:
    from longvlm import api

    tasks = tmp_path_factory.mktemp("reader_tasks") / "tasks.jsonl"
    api.synth(pool=str(small_pool), output=str(tasks), per_doc=1, progress=False, tasks="extract-single")
    return {"tasks": tasks, "pool": small_pool, "data": train_inputs["data"], "hf": train_inputs["hf"],
            "tokenizer": qwen_tokenizer_dir, "megatron": convert_to_megatron(train_inputs["hf"], 1, 1)}


def read_or_refuse(reader: Reader, path: Path) -> None:
    """Read ``path``: fine, or a one-line ``LongVLMError`` naming the file; anything else fails the test."""
    try:
        with time_limit(LIMIT_S):
            reader.read(path)
    except LongVLMError as err:
        message = str(err)
        assert "\n" not in message, message
        named = str(path) in message or str(path.parent) in message or \
            bool(reader.names_key and re.search(reader.names_key, message))
        assert named, f"{message!r} does not name {path}"
    except CaseTimeout:
        pytest.fail(f"{reader.name}: still reading after {LIMIT_S} s")


@pytest.mark.parametrize("reader", READERS, ids=[r.name for r in READERS])
def test_a_damaged_file_is_read_or_refused_in_one_line(reader, inputs, tmp_path):
    path = reader.make(tmp_path, inputs)
    valid = path.read_bytes()
    reader.read(path)  # the valid file reads

    @SETTINGS
    @given(data=damaged(valid))
    def check(data):
        path.write_bytes(data)
        reader.after_write(path)
        read_or_refuse(reader, path)

    check()


@SETTINGS
@given(items=st.lists(st.text(max_size=40).map(lambda t: t if "=" in t else t + "=" + t[:5]), min_size=1, max_size=3))
def test_any_override_is_applied_or_refused_in_one_line(items):
    from training.config import load_recipe

    try:
        with time_limit(LIMIT_S):
            load_recipe(None, items)
    except LongVLMError as err:
        assert "\n" not in str(err), str(err)
