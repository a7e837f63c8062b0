"""The docs stay true: every ``longvlm`` command line they show parses, the blocks marked runnable run
on a CPU, and figures they state about the code are the code's.

In the Markdown, ``<!-- runnable -->`` before a fenced ``bash`` or ``python`` block makes this test
run it, in a fresh folder holding ``pdfs/`` (one 12-page demo PDF) and ``longvlm/demo_pdfs``; a
page's runnable blocks run in order, in one folder. Mark only blocks that take seconds on a CPU
(eval.md's quick start takes a minute: the eval tests cover it).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
FENCE = re.compile(r"(?:<!-- (runnable) -->\n)?```(\w*)\n(.*?)```", re.S)


def blocks(page: Path) -> list[tuple[str | None, str, str]]:
    """``(marker, language, body)`` of every fenced block of ``page``."""
    return [(m[1], m[2], m[3]) for m in FENCE.finditer(page.read_text(encoding="utf-8"))]


def command_lines(page: Path) -> list[str]:
    """The ``longvlm ...`` invocations in ``page``'s shell and plain blocks (continuations joined,
    comments dropped), without usage synopses (``[--opt X]``) and printed output (``longvlm cmd: ...``)."""
    found = []
    for _, language, body in blocks(page):
        if language not in ("", "bash"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            m = re.search(r"(?:^|\s)(?:python -m )?longvlm (.*)", line)
            if not m or "[" in line or re.match(r"\S+:", m[1]):
                continue
            found.append(re.sub(r"\$\{?\w+\}?", "0", m[1]))  # shell variables (SLURM's): a number
    return found


def parse_cli(argv: list[str]) -> None:
    """Parse ``argv`` as ``longvlm`` does (``longvlm.cli.main``) without running the command."""
    from longvlm.cli import build_parser

    parser = build_parser(argv[0])
    args, extra = parser.parse_known_args(argv)
    if extra:  # only `longvlm train RECIPE ... key=value` takes trailing positionals
        assert isinstance(getattr(args, "overrides", None), list) and not any(a.startswith("-") for a in extra), extra


ALL_COMMANDS = [(page.name, line) for page in DOCS for line in command_lines(page)]


def test_the_docs_show_commands():
    assert len(ALL_COMMANDS) > 20 and {p for p, _ in ALL_COMMANDS} >= {"pool.md", "build.md", "eval.md", "demo.md"}


@pytest.mark.parametrize(("page", "line"), ALL_COMMANDS, ids=[f"{p}:{line[:40]}" for p, line in ALL_COMMANDS])
def test_documented_command_parses(page, line):
    try:
        parse_cli(shlex.split(line, comments=True))
    except SystemExit as exit_:  # argparse's "unrecognized arguments", "invalid choice", ...
        pytest.fail(f"{page}: `longvlm {line}` does not parse (exit {exit_.code}; see stderr)")


RUNNABLE = {page.name: page for page in DOCS if any(marker == "runnable" for marker, _, _ in blocks(page))}


@pytest.mark.slow  # pool.md's example pools a 12-page PDF at 144 dpi in worker processes: 15-35 s
@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_runnable_blocks_run(name, tmp_path, pdf_dir):
    (tmp_path / "pdfs").mkdir()
    shutil.copy(pdf_dir / "float.pdf", tmp_path / "pdfs" / "float.pdf")
    (tmp_path / "longvlm").mkdir()
    (tmp_path / "longvlm" / "demo_pdfs").symlink_to(pdf_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]), "OMP_NUM_THREADS": "1"}
    ran = 0
    for marker, language, body in blocks(RUNNABLE[name]):
        if marker == "runnable":
            cmd = ["bash", "-euo", "pipefail", "-c", body] if language == "bash" else [sys.executable, "-c", body]
            proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{name}, block {ran + 1}:\n{body}\n--- stderr ---\n{proc.stderr[-5000:]}"
            ran += 1
    assert ran


def test_runnable_pages_are_found():
    assert "pool.md" in RUNNABLE


def test_vocabulary_padding_figures_in_checkpoints_md():
    """docs/checkpoints.md: the 7B's 152,064 rows need no padding up to TP=4 and pad to 152,576 at TP=8."""
    from megatron_vlm.models.mapping import padded_vocab_size

    text = (REPO / "docs" / "checkpoints.md").read_text()
    assert "no padding up to TP=4" in text and "152,576" in text
    assert [padded_vocab_size(152064, tp) for tp in (1, 2, 4)] == [152064] * 3
    assert padded_vocab_size(152064, 8) == 152576 == -(-152064 // 1024) * 1024
