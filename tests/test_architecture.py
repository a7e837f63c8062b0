"""The import graph: dependencies point one way (front door -> stages -> core) and nothing imports in a circle;
in the tests, no test module imports another (shared code is in ``tests/helpers/``).

Every ``import`` of every module counts, including the lazy ones inside functions. The packages and
the directions they may import in are listed in ``ALLOWED`` (docs/architecture.md draws them).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("longvlm", "launch", "evaluation", "training", "checkpoint_tools", "preprocess", "megatron_vlm")
CORE = "megatron_vlm"

# component -> the components it may import (besides itself); order = top to bottom
ALLOWED = {
    "longvlm": {"launch", "evaluation", "training", "checkpoint_tools", "preprocess.dataset", "preprocess.synth",
                "preprocess.pool", CORE},
    "launch": {"evaluation", "training", "checkpoint_tools", "preprocess.dataset", "preprocess.synth",
               "preprocess.pool", CORE},
    "evaluation": {"training", "checkpoint_tools", "preprocess.dataset", "preprocess.synth", "preprocess.pool", CORE},
    "training": {"checkpoint_tools", CORE},
    "checkpoint_tools": {CORE},
    "preprocess.dataset": {CORE},
    "preprocess.synth": {CORE},
    "preprocess.pool": {CORE},
    CORE: set(),
}


# inside the core: sub-package (or top-level module) -> those it may import (besides itself and the
# package's own ``__init__``); order = top to bottom, as docs/architecture.md draws it
_BASE = {"megatron_vlm.errors", "megatron_vlm.utils"}
CORE_ALLOWED = {
    "megatron_vlm.model_builder": {"megatron_vlm.formats", "megatron_vlm.models", "megatron_vlm.runtime",
                                   "megatron_vlm.parallel", *_BASE},
    "megatron_vlm.data": {"megatron_vlm.formats", "megatron_vlm.models", "megatron_vlm.runtime", "megatron_vlm.parallel",
                          *_BASE},
    "megatron_vlm.formats": {"megatron_vlm.models", "megatron_vlm.parallel", *_BASE},
    "megatron_vlm.tokenizer": {"megatron_vlm.models", *_BASE},
    "megatron_vlm.flops": {"megatron_vlm.models", *_BASE},
    "megatron_vlm.models": {"megatron_vlm.runtime", "megatron_vlm.parallel", *_BASE},
    "megatron_vlm.runtime": {"megatron_vlm.parallel", *_BASE},
    "megatron_vlm.hardware": set(_BASE),
    "megatron_vlm.parallel": set(_BASE),
    "megatron_vlm.utils": {"megatron_vlm.errors"},
    "megatron_vlm.errors": set(),
}


def core_component(module: str) -> str:
    """``megatron_vlm.models.qwen25vl.arch`` -> ``megatron_vlm.models``; ``megatron_vlm.flops`` -> itself."""
    return ".".join(module.split(".")[:2])


def component(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "preprocess" and len(parts) > 1 else parts[0]


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            modules[name] = path
    return modules


def imports_of(path: Path, module: str, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``module`` imports (the longest known prefix of each imported name)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                if ".".join(parts[:i]) in modules:
                    target = ".".join(parts[:i])
                    if target != module:
                        found.add(target)
                    break
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(p, m, modules) for m, p in modules.items()}


def test_components_import_downward_only():
    wrong = sorted(f"{m} -> {t}" for m, targets in graph().items() for t in targets
                   if component(t) != component(m) and component(t) not in ALLOWED[component(m)])
    assert not wrong, "imports against the allowed directions:\n" + "\n".join(wrong)


def test_core_subpackages_import_downward_only():
    """Inside the core each sub-package has one direction: the loader (``data``) reads formats and asks the
    models; formats ask the family registry; models use the runtime; nothing imports back up."""
    modules = graph()
    core = {core_component(m) for m in modules if m.startswith(CORE + ".")}
    assert core == set(CORE_ALLOWED), f"list every part of the core in CORE_ALLOWED: {sorted(core ^ set(CORE_ALLOWED))}"
    wrong = sorted(f"{m} -> {t}" for m, targets in modules.items() if m.startswith(CORE + ".") for t in targets
                   if t != CORE and core_component(t) != core_component(m)
                   and core_component(t) not in CORE_ALLOWED[core_component(m)])
    assert not wrong, "core imports against the allowed directions:\n" + "\n".join(wrong)


def test_no_import_cycles():
    edges = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


FAMILY_PACKAGES = ("megatron_vlm.models.qwen25vl", "megatron_vlm.models.qwen3vl")
FAMILY_NAMES = re.compile(r"qwen2_5_vl|qwen3_vl|Qwen25VL|Qwen3VL|Qwen2_5_VL|qwen25vl|qwen3vl")


def test_no_stage_names_a_family():
    """Stages find a model's family in the registry (``megatron_vlm.models.registry``) instead of naming one: no
    module outside the family folders and the registry imports a family package or spells a family's
    ``model_type`` or class names in code (docstrings and comments may say which families exist)."""
    from megatron_vlm.models.registry import FAMILIES

    assert set(FAMILY_PACKAGES) == set(FAMILIES.values()), "list every registered family here"
    offenders = []
    for module, path in project_modules().items():
        if module.startswith(FAMILY_PACKAGES) or module == "megatron_vlm.models.registry":
            continue
        imported = [t for t in imports_of(path, module, project_modules()) if t.startswith(FAMILY_PACKAGES)]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        named = sorted({m.group() for node in ast.walk(tree)
                        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                        for m in FAMILY_NAMES.finditer(node.value)}
                       | {m.group() for node in ast.walk(tree) if isinstance(node, ast.Name | ast.Attribute)
                          for m in FAMILY_NAMES.finditer(node.id if isinstance(node, ast.Name) else node.attr)})
        if imported or named:
            offenders.append(f"{module}: imports {imported}, names {named}")
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_imports():
    """The graph is not trivially empty: known arrows are found, lazy ones included."""
    edges = graph()
    assert "megatron_vlm.formats.pool" in edges["megatron_vlm.data.dataset"]
    assert "preprocess.pool.run" in edges["longvlm.api"]  # imported inside a function
    assert component("preprocess.pool.build") == "preprocess.pool"
    assert "megatron_vlm.models.context_parallel" in edges["megatron_vlm.data.image_share"]
    assert core_component("megatron_vlm.models.qwen25vl.arch") == "megatron_vlm.models"


def test_the_core_check_sees_a_wrong_arrow(monkeypatch):
    """An import against the core's directions is reported (the check is not vacuous)."""
    real = graph()
    monkeypatch.setitem(globals(), "graph", lambda: {**real, "megatron_vlm.models.vlm":
                                                     real["megatron_vlm.models.vlm"] | {"megatron_vlm.data.loader"}})
    try:
        test_core_subpackages_import_downward_only()
    except AssertionError as err:
        assert "megatron_vlm.models.vlm -> megatron_vlm.data.loader" in str(err)
    else:
        raise AssertionError("a models -> data import went unnoticed")


TESTS = REPO / "tests"


def imported_test_modules(source: str, test_modules: set[str]) -> list[str]:
    """The test modules (``tests/test_*.py``, by name) that ``source`` imports, lazy imports included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        found += [name for name in names if name.split(".")[0] in test_modules]
    return sorted(set(found))


def test_tests_share_code_through_helpers_only():
    """No test module imports another (nor does a helper, a worker or conftest.py): shared code lives in
    ``tests/helpers/`` and shared fixtures in ``tests/conftest.py``. Besides the ``test_*.py`` modules and
    conftest.py, ``tests/`` holds no module of its own; helpers go into ``tests/helpers/``, worker scripts for
    multi-process tests into ``tests/workers/``."""
    test_modules = {p.stem for p in TESTS.glob("test_*.py")}
    importing = {str(p.relative_to(REPO)): names for p in sorted(TESTS.rglob("*.py"))
                 if (names := imported_test_modules(p.read_text(encoding="utf-8"), test_modules))}
    assert not importing, f"test modules imported (move what they share to tests/helpers/): {importing}"
    loose = sorted(p.name for p in TESTS.glob("*.py") if p.name != "conftest.py" and p.stem not in test_modules)
    assert not loose, f"modules directly in tests/ that are not test modules (move them to tests/helpers/): {loose}"


def test_the_tests_check_sees_a_test_module_import():
    """``from test_x import y``, ``import test_x`` and a lazy import inside a function are all reported."""
    modules = {"test_convert", "test_pool"}
    source = ("import json\nfrom helpers.checkpoints import hf_tensors\nfrom test_convert import hf_tensors\n"
              "def f():\n    import test_pool\n")
    assert imported_test_modules(source, modules) == ["test_convert", "test_pool"]
    assert imported_test_modules("from helpers.pools import pool_files\n", modules) == []
