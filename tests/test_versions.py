"""setup.py's version ranges against what was run: the CI pins (requirements.txt) and the GPU machine's versions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
# the GPU machine the team gets (README "Versions"): its Python, torch and transformers must install
GPU_MACHINE = {"python": "3.12", "torch": "2.11.0", "transformers": "5.17.0"}


def _setup_keywords() -> dict:
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords
            if k.arg in ("python_requires", "install_requires", "extras_require")}


def _ranges() -> dict[str, Requirement]:
    keywords = _setup_keywords()
    reqs = keywords["install_requires"] + [r for extra in keywords["extras_require"].values() for r in extra]
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in reqs}


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if m := re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.split("#")[0].strip()):
            pins[canonicalize_name(m[1])] = Version(m[2])
    return pins


def test_every_range_is_capped_and_admits_the_ci_pin():
    ranges, pins = _ranges(), _pins()
    for name, req in ranges.items():
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{req}: no upper bound"
        if name in pins:
            assert req.specifier.contains(pins[name]), f"requirements.txt pins {name}=={pins[name]}, outside {req}"
    # every runtime dependency is pinned for CI (transformer-engine is the GPU extra: no pin)
    assert set(ranges) - set(pins) == {"transformer-engine"}


def test_ranges_admit_the_gpu_machines_versions():
    keywords, ranges = _setup_keywords(), _ranges()
    assert SpecifierSet(keywords["python_requires"]).contains(GPU_MACHINE["python"])
    for name in ("torch", "transformers"):
        assert ranges[name].specifier.contains(GPU_MACHINE[name]), f"{ranges[name]} excludes {GPU_MACHINE[name]}"


def test_the_range_that_caused_trouble_stays_capped():
    """PyMuPDF 2 (an ONNX layout model inside find_tables) has never been run."""
    assert not _ranges()["pymupdf"].specifier.contains("2.0.0")
