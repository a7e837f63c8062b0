"""The results directory of one run: rows appended as examples finish, a summary at the end.

::

    OUT_DIR/
      run.json        the run's identity (task, result-determining options, backend), written first
      results.jsonl   one row per finished example, appended and flushed as each finishes
      results.json    task, config, backend, RoPE, inputs, versions, summary (atomic; at the end)

A rerun of the same run skips the examples whose row is there (a row with an ``error`` is tried
again); a run with other result-determining options refuses the directory rather than mixing
results. A torn last line (a killed process) is dropped on reopening.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from evaluation.config import EvalError
from megatron_vlm.utils.atomic import check_creatable, write_json
from megatron_vlm.utils.jsonl import read_json

ROWS, RUN, SUMMARY = "results.jsonl", "run.json", "results.json"


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def check_directory(directory: str | Path) -> None:
    """Before any work: ``directory`` can hold a run's results (new, empty, or a results directory already)."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise EvalError(f"-o {path}: exists and is not a directory")
    check_creatable(path, "-o", EvalError)
    if path.is_dir() and any(path.iterdir()) and not (path / RUN).is_file():
        raise EvalError(f"-o {path}: holds other files, not the results of a longvlm eval run (no {RUN}); "
                        "choose a new or empty folder")


class ResultStore:
    """``run.json`` + ``results.jsonl`` of a run directory; ``writer=False`` (ranks other than 0 of a
    parallel backend) only reads which examples are done."""

    def __init__(self, directory: str | Path, run: dict, writer: bool = True):
        self.directory = Path(directory)
        self.rows: dict[str, dict] = {}
        self._file = None
        if not writer:
            if (self.directory / ROWS).is_file():
                self._read((self.directory / ROWS).read_bytes())
            return
        check_directory(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        run_path = self.directory / RUN
        if run_path.is_file():
            old = read_json(run_path, EvalError)
            if old != run:
                changes = "; ".join(_diff(old, run)[:6])
                raise EvalError(f"-o {self.directory}: holds results of another run ({changes}); "
                                "use another output directory or remove it")
        else:
            write_json(run_path, run)
        path = self.directory / ROWS
        if path.is_file():
            self._load(path)
        self._file = open(path, "a", encoding="utf-8")

    def _load(self, path: Path) -> None:
        data = path.read_bytes()
        keep = self._read(data, path)
        if keep < len(data):
            with open(path, "r+b") as f:
                f.truncate(keep)

    def _read(self, data: bytes, path: Path | None = None) -> int:
        """Rows of ``results.jsonl``'s bytes; the length of its whole rows (a torn last row excluded)."""
        path = path or self.directory / ROWS
        lines = data.split(b"\n")
        keep = len(data)
        if lines and lines[-1]:  # no final newline: a torn last row
            keep -= len(lines[-1])
            lines = lines[:-1]
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalError(f"{path}:{number}: not valid JSON ({err.msg}); remove the line to resume") from None
            self.rows[row["id"]] = row  # a later row (a retried error) replaces an earlier one
        return keep

    def done(self, example_id: str) -> bool:
        row = self.rows.get(example_id)
        return row is not None and "error" not in row

    def add(self, row: dict) -> None:
        self.rows[row["id"]] = row
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def write_summary(self, results: dict) -> Path:
        path = self.directory / SUMMARY
        write_json(path, results)
        return path
