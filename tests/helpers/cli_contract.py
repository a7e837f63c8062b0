"""The command-line contract, generated: every option of every subcommand gets the bad values of its
kind, and each must end in exit 2 with one line on stderr naming the option or the file, no
traceback, nothing created or changed, within a time limit.

The cases come from walking ``longvlm``'s own argparse definitions (and, for ``longvlm train``, the
recipe's dataclasses), so an option or recipe key added later is tried without touching this file.
What an option's values mean is read from argparse (its type, choices, nargs); a path's direction
(input or output, file or folder) from the tables in ``tests/test_cli_contract.py``. This module is
the machinery: walking, generating, running one case in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import signal
import time
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

# Bad values by kind. Numbers: the list; for an int option argparse refuses the non-integers
# itself, and a huge integer stands for "1e30".
HUGE_INT = "100000000000"
INT_VALUES = ("0", "-1", HUGE_INT, "nan", "inf", "1e30", "word")
FLOAT_VALUES = ("0", "-1", "nan", "inf", "-inf", "1e30", "word")
UNKNOWN_CHOICE = "no-such-choice"

# Path values (placeholders resolved per case inside the case's scratch folder, whose name has a space
# and non-ASCII letters, so every path case also tries such names).
MISSING = "{scratch}/missing ü"
A_FOLDER = "{scratch}/a folder ü"
A_FILE = "{scratch}/a file ü.txt"
UNDER_A_FILE = "{scratch}/a file ü.txt/sub/out"  # cannot be created (even by root): its parent is a file
FOREIGN_FOLDER = "{scratch}/someone else's folder ü"  # a non-empty folder of unrelated files

PATH_CASES: dict[str, tuple[tuple[str, str], ...]] = {
    # kind: (label, value) ...
    "in-file": (("missing", MISSING), ("a folder", A_FOLDER)),
    "in-dir": (("missing", MISSING), ("a file", A_FILE)),
    "in-any": (("missing", MISSING),),
    "in-prefix": (("missing", MISSING), ("a folder", A_FOLDER)),
    "out-file": (("a folder", A_FOLDER), ("unwritable", UNDER_A_FILE), ("existing", A_FILE)),
    "out-dir": (("a file", A_FILE), ("unwritable", UNDER_A_FILE), ("existing", FOREIGN_FOLDER)),
    "out-prefix": (("a folder", A_FOLDER), ("unwritable", UNDER_A_FILE)),
}
PATH_KINDS = tuple(PATH_CASES)


@dataclass(frozen=True)
class Leaf:
    """One runnable subcommand: ``("convert", "verify")`` and its parser."""

    words: tuple[str, ...]
    parser: argparse.ArgumentParser

    @property
    def name(self) -> str:
        return " ".join(self.words)

    def options(self) -> list[argparse.Action]:
        """The actions that take a value (flags and --help have no bad value; a renamed option's hidden old
        spelling is refused whatever its value)."""
        return [a for a in self.parser._actions
                if not isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._StoreConstAction,
                                      argparse.BooleanOptionalAction, argparse._SubParsersAction))
                and a.help != argparse.SUPPRESS]


def action_name(action: argparse.Action) -> str:
    """``--gpus`` for an option, the dest (``recipe``) for a positional."""
    return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0]) \
        if action.option_strings else action.dest


def leaves() -> list[Leaf]:
    """Every subcommand of ``longvlm``, down to the actions of ``convert``, ``slurm`` and ``eval``."""
    from longvlm.cli import COMMANDS, build_parser

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> Iterator[Leaf]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield Leaf(words, parser)
            return
        for name, child in subs[0].choices.items():
            yield from walk(child, (*words, name))

    out = []
    for command in COMMANDS:
        root = build_parser(command.name)
        (sub,) = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
        out += walk(sub.choices[command.name], (command.name,))
    return out


def recipe_keys(cls: type | None = None, prefix: str = "") -> list[tuple[str, type]]:
    """``(dotted key, type)`` of every scalar leaf of the training recipe (``training.config.TrainConfig``)."""
    if cls is None:
        from training.config import TrainConfig

        cls = TrainConfig
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
        if dataclasses.is_dataclass(tp):
            out += recipe_keys(tp, f"{prefix}{f.name}.")
        elif tp in (int, float, str, bool):
            out.append((f"{prefix}{f.name}", tp))
    return out


@dataclass(frozen=True)
class Case:
    """One bad input: ``leaf``'s baseline with ``option`` set to ``value``."""

    leaf: str
    option: str  # --gpus, a positional's dest, or a recipe key (optimizer.lr)
    label: str  # what the value is ("nan", "missing", ...)
    value: str
    names: tuple[str, ...]  # what the one line must name (any of them)
    recipe_key: bool = False
    damaged: bool = False  # value: the input of which a damaged copy is given

    @property
    def id(self) -> str:
        """The test id and the tables' spelling: ``tune --gpus=0``, ``train optimizer.lr=nan``, ``pool --output=existing``."""
        return f"{self.leaf} {self.option}={self.label}"


def numeric_values(tp) -> tuple[str, ...]:
    return INT_VALUES if tp is int else FLOAT_VALUES


def generate(leaves_: list[Leaf], path_kind, recipe_leaves: tuple[str, ...]) -> list[Case]:
    """The cases of every option of every leaf, and of every recipe key for ``recipe_leaves``.
    ``path_kind(leaf, option)``: a kind of ``PATH_CASES``, ``"choice"``, ``"text"`` (free text: its bad
    value, if any, comes from the caller's table) or ``None`` (unclassified: the caller's guard fails)."""
    cases = []
    for leaf in leaves_:
        for action in leaf.options():
            option = action_name(action)
            # the option as given, or as a setting (``tp=3`` in a layout message), or a positional's metavar
            names = (*action.option_strings, f"{action.dest}=") if action.option_strings \
                else (action.dest, str(action.metavar))
            if action.choices is not None:
                cases.append(Case(leaf.name, option, "unknown", UNKNOWN_CHOICE, names))
            elif action.type in (int, float):
                cases += [Case(leaf.name, option, v, v, names) for v in numeric_values(action.type)]
            else:
                kind = path_kind(leaf.name, option)
                for label, value in PATH_CASES.get(kind, ()):
                    cases.append(Case(leaf.name, option, label, value, (*names, "{value}")))
        if leaf.name in recipe_leaves:
            for key, tp in recipe_keys():
                if tp in (int, float):
                    cases += [Case(leaf.name, key, v, v, (key,), recipe_key=True) for v in numeric_values(tp)]
                elif tp is bool:
                    cases.append(Case(leaf.name, key, "word", "word", (key,), recipe_key=True))
                elif path_kind(leaf.name, key) in PATH_CASES:
                    cases += [Case(leaf.name, key, label, value, (key, "{value}"), recipe_key=True)
                              for label, value in PATH_CASES[path_kind(leaf.name, key)]]
                elif path_kind(leaf.name, key) == "choice":
                    cases.append(Case(leaf.name, key, "unknown", UNKNOWN_CHOICE, (key,), recipe_key=True))
    return cases


def argv_of(leaf: Leaf, baseline: dict[str, object], option: str | None = None, value: object = None,
            recipe_key: bool = False) -> list[str]:
    """The command line: ``leaf``'s words, its options as ``--opt=value``, then ``--`` and the
    positionals (so that a value beginning with ``-`` is never taken for an option). ``baseline`` maps
    an option (``--pool``) or a positional's dest to its value (a list for ``nargs``; ``True``/``False``
    for a ``--x/--no-x`` flag)."""
    values = dict(baseline)
    if option is not None and not recipe_key:
        values[option] = value
    opts, positionals = [], []
    for action in leaf.parser._actions:
        name = action_name(action)
        if name not in values:
            continue
        given = values[name]
        items = given if isinstance(given, list) else [given]
        if isinstance(action, argparse.BooleanOptionalAction):
            opts.append(name if given else name.replace("--", "--no-", 1))
        elif action.option_strings:
            if isinstance(action, argparse._AppendAction):
                opts += [f"{name}={v}" for v in items]
            elif action.nargs in ("+", "*"):
                opts += [name, *map(str, items)]
            else:
                opts.append(f"{name}={items[0]}")
        else:
            positionals += [str(v) for v in items]
    if recipe_key:
        positionals.append(f"{option}={value}")
    return [*leaf.words, *opts, *(["--", *positionals] if positionals else [])]


# --- running one case -------------------------------------------------------------------------------

class CaseTimeout(BaseException):
    """Raised in the main thread when a case runs past its limit (not an ``Exception``: ``longvlm``'s
    own handler must not turn it into exit 70)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def expire(signum, frame):
        raise CaseTimeout(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def memory_limit(extra_gib: float = 8):
    """At most ``extra_gib`` more address space for this process (and what it starts) while a case runs: a value
    that makes a command allocate without bound fails the case with ``MemoryError`` instead of bringing the
    out-of-memory killer onto a shared machine."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = psutil.Process().memory_info().vms + int(extra_gib * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@dataclass
class Outcome:
    code: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False


@contextlib.contextmanager
def in_folder(cwd: Path):
    """Run a case in ``cwd``; on the way out, back to the old folder, and every process the case started
    and left running (a worker of pool, synth or build: a fork of this 0.7 GB process) is killed, so no
    case, refused, timed out or not, leaves processes behind."""
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    old = os.getcwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old)
        for child in me.children(recursive=True):
            if child.pid not in before:
                with contextlib.suppress(psutil.Error):
                    child.kill()


def run_cli(argv: list[str], cwd: Path, seconds: float) -> Outcome:
    """``longvlm.cli.main(argv)`` in this process, in ``cwd``, with its output captured."""
    from longvlm.cli import main

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    code, timed_out = None, False
    try:
        with in_folder(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_limit(seconds), \
                memory_limit():
            try:
                code = main(argv)
            except SystemExit as stop:  # argparse
                code = stop.code if isinstance(stop.code, int) else 1
    except CaseTimeout:
        timed_out = True
    return Outcome(code, out.getvalue(), err.getvalue(), time.perf_counter() - start, timed_out)


SELECTORS = ("command", "action", "eval_task", "print_config")  # the namespace's words, not API keywords


def api_function(leaf: Leaf, namespace: argparse.Namespace):
    """``longvlm.api``'s call for ``leaf`` with the options of ``namespace``, as a function of nothing."""
    from longvlm import api

    opts = {k: v for k, v in vars(namespace).items() if not k.startswith("_") and k not in SELECTORS}
    first, rest = leaf.words[0], leaf.words[1:]
    if first == "train":
        return lambda: api.train(opts["recipe"], output=opts["output"], overrides=opts["overrides"])
    if first == "study":  # files, then key=value overrides
        from launch.study.cli import split_args

        def call_study():
            files, overrides = split_args(opts.pop("args"))
            return api.study(*rest, files, overrides, **opts)

        return call_study
    call = api.evaluate if first == "eval" else getattr(api, first)
    return lambda: call(*rest, **opts)


def run_api(function, cwd: Path, seconds: float) -> tuple[BaseException | None, bool]:
    """Call ``function`` in ``cwd`` (output captured and dropped); the exception it raised, and whether it timed out."""
    try:
        with in_folder(cwd), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                time_limit(seconds), memory_limit():
            function()
    except CaseTimeout:
        return None, True
    except Exception as err:  # what the caller gets
        return err, False
    return None, False


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under ``roots``: its kind, size and modification time (what a write would change)."""
    state = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                state[path] = (st.st_mode, st.st_size if name in filenames else 0, st.st_mtime_ns)
    return state


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    return [f"created {p}" for p in added] + [f"removed {p}" for p in removed] + [f"changed {p}" for p in changed]
