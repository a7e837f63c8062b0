"""Bad input gets one line, proven by generated cases (README, after the exit-status table; machinery in
``tests/helpers/cli_contract.py``).

Every option of every subcommand, and every scalar key of the training recipe, is tried with the bad
values of its kind: numbers 0, -1, a huge one, nan, inf, 1e30 and a word; an unknown choice; paths that
are missing, a folder where a file is expected and the reverse, an existing output, a location that
cannot be created (all inside a folder whose name has a space and non-ASCII letters); and every input a
command's baseline reads is given as a damaged copy. Each must end in exit 2 with exactly one line on
stderr that names the option or the file, no traceback, nothing created or changed, within a time and
memory limit; the same options through ``longvlm.api`` raise a ``LongVLMError`` with the same message.
A new option is tried the day it is added: numbers and choices by their argparse type; a string option
must say in PATHS or TEXT what it holds (test_every_string_option_is_classified fails until it does).
The tables below say what the walk cannot know, and ACCEPTED which generated value is valid, and why.

Count the cases: ``python -m pytest tests/test_cli_contract.py --collect-only -q -k test_refused | tail -1``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest
from helpers.cli_contract import (
    A_FILE,
    A_FOLDER,
    FOREIGN_FOLDER,
    Case,
    action_name,
    api_function,
    argv_of,
    changes,
    generate,
    leaves,
    recipe_keys,
    run_api,
    run_cli,
    snapshot,
)

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 60  # per case; a refusal takes milliseconds, so this never trips on a busy machine, only on a hang

# --- what the walk cannot know ----------------------------------------------------------------------

# Where a path option points. Keys: "LEAF OPTION" or "* OPTION" (every leaf that has it). A string
# option in neither PATHS nor TEXT fails test_every_string_option_is_classified.
PATHS = {
    "pool inputs": "in-any", "pool --output": "out-dir", "pool --exclude-hashes": "in-file",
    "synth pool": "in-dir", "synth --output": "out-file", "synth --merge": "in-file",
    "build tasks": "in-file", "build --pool": "in-dir", "build --tokenizer": "in-dir", "build --output": "out-prefix",
    "stats prefix": "in-prefix", "stats --plot": "out-file",
    "convert hf-to-megatron --hf": "in-dir", "convert hf-to-megatron --out": "out-dir",
    "convert megatron-to-hf --ckpt": "in-dir", "convert megatron-to-hf --out": "out-dir",
    "convert megatron-to-hf --hf-template": "in-dir",
    "convert reshard --ckpt": "in-dir", "convert reshard --out": "out-dir",
    "convert verify --hf": "in-dir", "convert verify --ckpt": "in-dir", "convert verify --image": "in-file",
    "train recipe": "in-file", "train --output": "out-dir",
    "tune --model": "in-any", "tune --data": "in-prefix", "tune --write-recipe": "out-file",
    "slurm train recipe": "in-file", "slurm train --run-dir": "out-dir", "slurm train --output": "out-file",
    "slurm status directory": "in-dir",
    "slurm local recipe": "in-file", "slurm local --output": "out-dir",
    "eval score predictions": "in-file", "eval score --output": "out-file",
    "eval niah --output": "out-dir", "eval docqa --output": "out-dir",
    "eval niah --pool": "in-dir", "eval docqa --pool": "in-dir", "eval docqa input": "in-file",
    "eval docqa --pdf-dir": "in-dir",
    "* --checkpoint": "in-dir", "* --tokenizer": "in-dir",
    "demo --output": "out-dir", "demo --pdfs": "in-dir", "demo --pool": "in-dir",
    "build --short-data": "in-file", "build --short-image-dir": "in-dir", "* --image-dir": "in-dir",
    "eval mmniah --output": "out-dir", "eval mmniah input": "in-file",
    "study run --work": "out-dir", "study report --work": "in-dir", "study report --output": "out-prefix",
    # recipe keys
    "train model.checkpoint": "in-dir", "train data.valid": "in-prefix", "train data.pool_dir": "in-dir",
}

# Free-text options: a value that is bad for it, or (a string starting with "no case:") why none is.
TEXT = {
    "synth --tasks": "ocr-everything", "synth --segment-pages": "15-8", "synth --needle-pages": "banana",
    "* --endpoint": "no case: used only by --generator openai / --backend openai, not by the baselines",
    "* --api-key-env": "no case: read only when a request is sent (an unset variable means no key)",
    "* --cache-dir": "no case: used only by --generator openai / --backend openai, not by the baselines",
    "* --model": "no case: a model name at an endpoint; any text is a name",
    "build --mixture": "extract-single=banana", "build --length-dist": "no-such-distribution",
    "convert megatron-to-hf --iteration": "banana", "convert reshard --iteration": "banana",
    "convert verify --iteration": "banana", "convert megatron-to-hf --max-shard-size": "banana",
    "convert megatron-to-hf --rope-scaling": "{not json", "convert verify --prompt": "no case: any text is a probe",
    "train overrides": "optimizer.lr", "slurm train overrides": "optimizer.lr", "slurm local overrides": "optimizer.lr",
    "* --time": "banana", "* --mem": "banana", "* --partition": "no case: a name the scheduler checks",
    "* --account": "no case: a name the scheduler checks", "* --qos": "no case: a name the scheduler checks",
    "* --job-name": "no case: any text is a job name", "* --sbatch": "exclusive", "* --dependency": "banana",
    "* --venv": "no case: a path on the cluster's nodes, not necessarily on this machine",
    "* --container-image": "no case: an image name the cluster resolves",
    "* --container-mounts": "no case: srun checks it on the cluster", "* --setup": "no case: any shell line",
    "* --env": "NO-EQUALS-SIGN",
    "slurm pool stage_args": "--no-such-option", "slurm synth stage_args": "--no-such-option",
    "* --backend": "banana", "* --device": "banana", "* --attn-implementation": "no case: transformers checks it "
    "when the model loads, after the inputs are read (and it accepts custom kernels by name)",
    "* --rope-target-length": "banana", "* --rope-original-length": "banana",
    "eval niah --lengths": "banana", "eval niah --needle-modes": "banana", "eval docqa --max-context": "banana",
    "eval docqa --instruction": "no case: any text (or '') is an instruction",
    "eval docqa --context-lengths": "banana", "study run --only": "no-such-stage", "demo --study": "no-such-experiment",
    "study run args": "no-such-experiment.yaml", "study report args": "no-such-experiment.yaml",
    # recipe keys of type str
    "train model.attention_backend": "choice", "train model.recompute": "choice", "train train.precision": "choice",
    "train optimizer.schedule": "choice", "train guard.on_nan": "choice", "train guard.on_spike": "choice",
    "train model.rope.mode": "choice", "train model.transformer_impl": "choice", "train parallel.cp_comm_type": "choice",
}

# Generated values that are valid for an option (not run: they would do the work), with the reason.
# Keys: "LEAF OPTION=LABEL" or "* OPTION=LABEL".
ACCEPTED = {
    "* --seed=0": "a seed", "* --seed=100000000000": "a seed (numpy and torch take any integer >= 0)",
    "* --shard=0": "the first shard", "* --num-shards=100000000000": "sharding by document hash: most shards are empty",
    "pool --min-pages=0": "0 = no limit", "pool --max-pages=0": "0 = no limit",
    "pool --max-pages=100000000000": "no practical limit", "pool --min-pixels=0": "no lower bound (a page is at "
    "least one 28x28 patch anyway)", "pool --max-pixels=100000000000": "no upper bound but the render's own size",
    "pool --min-psnr=0": "0 = do not check", "pool --page-timeout=0": "0 = no limit",
    "pool --chunk-docs=100000000000": "chunks are cut down so that every worker has work",
    "synth --output=existing": "a rerun writes the same tasks again, whole (atomic), as a build or pool rerun does",
    "* --max-retries=0": "no retries", "* --retry-backoff=0": "retry at once", "synth --temperature=0": "greedy",
    "synth --max-tokens=100000000000": "the server checks it against its model's window",
    "build --max-repeats=1e30": "no cap on repeats (on purpose: the help says so)",
    "build --output=a folder": "a prefix names files beside it (PREFIX.json, a hidden version folder): no conflict",
    "build --pack-window=100000000000": "one packing window for all samples",
    "stats --plot=existing": "a plot is written whole again (atomic), like every rerun's output",
    "convert megatron-to-hf --rope-theta=1e30": "any positive RoPE base",
    "convert verify --atol=0": "exact equality", "convert verify --atol=1e30": "any tolerance",
    "eval score --output=existing": "the scored rows are a function of the predictions: written whole again",
    "* --limit=100000000000": "every example", "* --max-batch-tokens=100000000000": "no limit on padded tokens",
    "* --max-pixels=100000000000": "no upper bound but the render's own size",
    "eval niah --depths=0": "a needle at the start",
    **{f"{leaf} --gpus-per-node=0": "CPU tasks (testing without GPUs)" for leaf in ("slurm train", "study run")},
    "study report --output=a folder": "a prefix names files beside it (PREFIX.md, .csv, .png): no conflict",
    "slurm train --signal-seconds=0": "the signal at the time limit itself", "* --step-wait=0": "end the others at once",
    "* --max-parallel=100000000000": "no limit on array tasks at once",
    "build --short-share=0": "no short data", **{f"build --short-image-dir={v}": "read only with --short-data, "
                                                "which the baseline has not (the short data's own readers check it)"
                                                for v in ("missing", "a file")},
    "study run --work=existing": "the work folder is shared by design: every artifact goes into a folder of its key",
    "study report --work=missing": "a report of experiments not run yet: every score '-'",
    **{f"study {a} args=damaged {k}": f"{'the dry run' if a == 'run' else 'the report'} reads no input; each stage "
       "checks its inputs as its own command does (the damaged cases above)"
       for a in ("run", "report") for k in ("pool", "hf", "tokenizer", "questions")},
    "slurm status directory=damaged run": "status reports the job records, checkpoint and metrics it finds; the run's "
    "script (its largest file, damaged here) is the job's to run", "* --rope-base=1e30": "any positive RoPE base",
    # recipe keys
    **{f"train {k}=0": why for k, why in {
        "train.seed": "a seed", "data.num_workers": "the training process loads its own batches",
        "train.train_tokens": "unset: train.train_steps gives the steps", "optimizer.min_lr": "decay to 0",
        "optimizer.warmup_fraction": "no warmup", "optimizer.wsd_decay_fraction": "no decay phase",
        "optimizer.weight_decay": "no weight decay", "optimizer.adam_beta1": "no momentum",
        "optimizer.adam_beta2": "no second-moment averaging", "optimizer.clip_grad": "0 disables clipping",
        "checkpoint.save_interval": "save only at the end and on a signal", "logging.eval_interval": "never",
        "guard.spike_factor": "0 turns spike detection off"}.items()},
    **{f"train {k}=100000000000": why for k, why in {
        "train.seed": "a seed", "train.global_batch_size": "a big batch (the rows repeat)",
        "train.train_steps": "a long run", "checkpoint.save_interval": "save only at the end and on a signal",
        "checkpoint.keep_last": "keep every checkpoint", "logging.log_interval": "log rarely",
        "logging.eval_batches": "validation reads its rows cyclically", "guard.spike_window": "a long window"}.items()},
    **{f"train {k}=1e30": why for k, why in {
        "model.rope.base": "any positive RoPE base", "train.train_tokens": "a budget train.train_steps overrides",
        "optimizer.lr": "finite and positive: a user's choice (the loss guard stops a diverging run)",
        "optimizer.weight_decay": "finite: a user's choice", "optimizer.adam_eps": "finite and positive",
        "optimizer.clip_grad": "no effective clipping", "logging.peak_tflops": "a figure of the user's GPU",
        "guard.spike_factor": "never a spike"}.items()},
    "tune --global-batch=100000000000": "any number of rows per step can be planned for",
    "tune --top=100000000000": "shows every layout that fits",
    **{f"tune --{o}=1e30": "a figure of the user's own hardware: any finite positive one plans (a big one "
       "only makes that part free)" for o in ("gpu-memory-gib", "peak-tflops", "fp8-tflops", "hbm-gbps",
                                             "nvlink-gbps", "network-gbps", "host-memory-gib")},
    "tune --fp8-tflops=0": "0 is a GPU without fp8 (as the a100 preset)",
    "tune --dpi=1e30": "a page is resized to --max-pixels whatever its render resolution",
    "tune --image-share=0": "text-only rows",
    "tune --answer-tokens=100000000000": "capped at the row's length",
    "tune --fragmentation=0": "no fragmentation allowance",
    "tune --reserved-gib=0": "nothing reserved (the default with --gpu cpu)",
    "tune --loader-workers=0": "the training process loads its own batches (data.num_workers=0)",
    **{f"tune --{o}=100000000000": "the plan reports the host memory that many batches in flight need"
       for o in ("loader-workers", "prefetch-factor")},
}

# Leaves where an accepted value is run to the end (cheap commands): it must exit 0 or 1, no traceback.
CHEAP = ("tune", "stats", "eval score", "slurm status", "study run", "study report")


def _lookup(table: dict, leaf: str, key: str):
    return table.get(f"{leaf} {key}", table.get(f"* {key}"))


def path_kind(leaf: str, option: str) -> str | None:
    kind = _lookup(PATHS, leaf, option)
    if kind:
        return kind
    text = _lookup(TEXT, leaf, option)
    return "choice" if text == "choice" else ("text" if text is not None else None)


LEAVES = leaves()
BY_NAME = {leaf.name: leaf for leaf in LEAVES}
CASES = generate(LEAVES, path_kind, recipe_leaves=("train",))
for _leaf in LEAVES:  # free-text options with a bad value of their own
    for _action in _leaf.options():
        _bad = _lookup(TEXT, _leaf.name, action_name(_action))
        if _action.choices is None and _action.type not in (int, float) and isinstance(_bad, str) \
                and _bad != "choice" and not _bad.startswith("no case:") \
                and not _lookup(PATHS, _leaf.name, action_name(_action)):
            CASES.append(Case(_leaf.name, action_name(_action), "bad", _bad,
                              (*_action.option_strings, "{value}") if _action.option_strings
                              else (_action.dest, str(_action.metavar), "{value}")))


# --- inputs -----------------------------------------------------------------------------------------

# A valid command line per leaf: options by name, positionals by dest; ``{scratch}`` is the case's folder and
# ``{NAME}`` an input of the ``inputs`` fixture. A case changes one entry.
TRAIN_OVERRIDES = ["data.train=[{prefix: {pooldata}}]", "data.pool_dir={pool}", "model.checkpoint={hf}", "train.train_steps=2",
                   "train.global_batch_size=4", "train.precision=fp32", "checkpoint.save_interval=0",
                   "logging.tensorboard=false", "data.num_workers=0"]
STUDY_ARGS = ["{study}", "inputs.pool={pool}", "inputs.tokenizer={tokenizer}", "inputs.base_model={hf}", "synth.model=m",
              *(f"inputs.data.{name}={{questions}}" for name in ("mmlongbench", "longdocurl", "mmniah", "slidevqa",
                                                                 "short_instruct")),
              *(f"inputs.data.{name}={{pdfs}}" for name in ("mmlongbench_pdfs", "longdocurl_pdfs", "slidevqa_images"))]
BASELINES = {
    "pool": {"inputs": ["{pdf}"], "--output": "{scratch}/pool", "--min-pages": 0, "--progress": False},
    "synth": {"pool": "{pool}", "--output": "{scratch}/tasks.jsonl", "--progress": False},
    "build": {"tasks": ["{tasks}"], "--pool": "{pool}", "--tokenizer": "{tokenizer}", "--output": "{scratch}/data",
              "--seq-length": 8192, "--token-budget": 8000, "--mixture": "extract-single=1", "--progress": False},
    "stats": {"prefix": "{data}"},
    "convert hf-to-megatron": {"--hf": "{hf}", "--out": "{scratch}/meg"},
    "convert megatron-to-hf": {"--ckpt": "{megatron}", "--out": "{scratch}/hf"},
    "convert reshard": {"--ckpt": "{megatron}", "--out": "{scratch}/meg"},
    "convert verify": {"--hf": "{hf}", "--ckpt": "{megatron}"},
    "train": {"recipe": "tiny-cpu", "overrides": TRAIN_OVERRIDES, "--output": "{scratch}/run"},
    "tune": {"--model": "qwen2.5-vl-7b", "--gpus": 2, "--global-batch": 2, "--seq-length": 8192},
    "slurm train": {"recipe": "tiny-cpu", "overrides": TRAIN_OVERRIDES, "--run-dir": "{scratch}/run",
                    "--gpus-per-node": 0, "--tasks-per-node": 1},
    "slurm pool": {"--num-shards": 2, "stage_args": ["{pdf}", "-o", "{scratch}/pool"]},
    "slurm synth": {"--num-shards": 2, "stage_args": ["{pool}", "-o", "{scratch}/tasks.jsonl"]},
    "slurm status": {"directory": "{run}"},
    "slurm local": {"recipe": "tiny-cpu", "overrides": TRAIN_OVERRIDES, "--output": "{scratch}/run"},
    "eval score": {"predictions": "{predictions}"},
    "eval niah": {"--pool": "{pool}", "--checkpoint": "{hf}", "--tokenizer": "{tokenizer}",
                  "--output": "{scratch}/niah", "--lengths": ["2K"], "--progress": False},
    "eval docqa": {"input": "{questions}", "--pool": "{pool}", "--checkpoint": "{hf}", "--tokenizer": "{tokenizer}",
                   "--output": "{scratch}/docqa", "--progress": False},
    "eval mmniah": {"input": ["{mmniah}"], "--image-dir": "{mmniah_images}", "--checkpoint": "{hf}",
                    "--tokenizer": "{tokenizer}", "--output": "{scratch}/mmniah", "--progress": False},
    "study run": {"args": STUDY_ARGS, "--work": "{scratch}/study", "--dry-run": True},
    "study report": {"args": STUDY_ARGS, "--work": "{scratch}/study", "--output": "{scratch}/report"},
    "demo": {"--output": "{scratch}/demo", "--pdfs": "{pdfs}"},
}
# Inputs a damaged copy of is tried wherever a baseline reads them (PDFs are not: a bad PDF is rejected and
# recorded by design, not an error).
DAMAGEABLE = ("pool", "pooldata", "data", "hf", "megatron", "tokenizer", "tasks", "predictions", "questions", "run",
              "mmniah")

for _name, _base in BASELINES.items():
    for _option, _value in _base.items():
        for _key in DAMAGEABLE:
            if any(f"{{{_key}}}" in str(v) for v in (_value if isinstance(_value, list) else [_value])):
                CASES.append(Case(_name, _option, f"damaged {_key}", _key, ("{value}",), damaged=True))
REFUSED = [c for c in CASES if _lookup(ACCEPTED, c.leaf, f"{c.option}={c.label}") is None]
ACCEPTED_CASES = [c for c in CASES if c not in REFUSED]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, train_inputs, qwen_tokenizer_dir, small_pool, convert_to_megatron, pdf_dir) -> dict:
    """Valid inputs for every baseline: the shared session fixtures, plus a tasks file, a dataset whose pages
    are the pool's, predictions, docqa questions and a run directory of ``slurm train``."""
    from longvlm import api

    root = tmp_path_factory.mktemp("contract_inputs")
    tasks = root / "tasks.jsonl"
    api.synth(pool=str(small_pool), output=str(tasks), per_doc=1, progress=False, tasks="extract-single")
    api.build(tasks=[str(tasks)], pool=str(small_pool), tokenizer=str(qwen_tokenizer_dir), output=str(root / "pooldata"),
              seq_length=8192, token_budget=8000, mixture="extract-single=1", progress=False)
    predictions = root / "predictions.jsonl"
    predictions.write_text('{"question": "q", "answer": "4", "answer_format": "Int", "prediction": "4"}\n')
    questions = root / "questions.jsonl"
    doc = json.loads((small_pool / "manifest.jsonl").read_text().splitlines()[0])["doc_id"]
    questions.write_text(json.dumps({"doc": doc, "question": "q?", "answer": "a", "answer_format": "Str",
                                     "evidence_pages": [1]}) + "\n")
    found = {"pool": small_pool, "tasks": tasks, "tokenizer": qwen_tokenizer_dir, "hf": train_inputs["hf"],
             "megatron": convert_to_megatron(train_inputs["hf"], 1, 1), "data": train_inputs["data"],
             "pooldata": root / "pooldata", "predictions": predictions, "questions": questions,
             "run": root / "slurm run", "pdf": pdf_dir / "float.pdf", "pdfs": pdf_dir,
             "mmniah": REPO / "tests" / "data" / "mmniah" / "retrieval-image-val.jsonl",
             "mmniah_images": REPO / "tests" / "data" / "mmniah", "study": REPO / "recipes" / "study" / "length-pool-native.yaml"}
    api.slurm("train", recipe="tiny-cpu", overrides=resolve(TRAIN_OVERRIDES, root, found), run_dir=str(found["run"]),
              gpus_per_node=0, tasks_per_node=1)
    return {**found, "roots": [root, small_pool, qwen_tokenizer_dir, train_inputs["tmp"]]}


def resolve(value, scratch: Path, inputs: dict):
    """``value`` with ``{scratch}`` and ``{NAME}`` replaced by paths (lists element by element)."""
    if isinstance(value, list):
        return [resolve(v, scratch, inputs) for v in value]
    if not isinstance(value, str):
        return value
    for name, path in inputs.items():
        if isinstance(path, Path):
            value = value.replace(f"{{{name}}}", str(path))
    return value.replace("{scratch}", str(scratch))


def damaged_copy(source: Path, scratch: Path) -> Path:
    """A copy of the input ``source`` (a file, a folder, or a built dataset's prefix) in ``scratch``, with its
    largest file cut in half: a file damaged on disk or cut off by a full one."""
    target = scratch / "damaged ü" / source.name
    target.parent.mkdir()
    if source.is_dir():
        shutil.copytree(source, target)
        files = [p for p in target.rglob("*") if p.is_file()]
    elif source.is_file():
        shutil.copy2(source, target)
        files = [target]
    else:  # a dataset prefix: its JSON and the version folder the JSON names
        meta = Path(f"{source}.json")
        shutil.copy2(meta, f"{target}.json")
        version = json.loads(meta.read_text())["files_dir"]
        shutil.copytree(source.parent / version, target.parent / version)
        files = [p for p in (target.parent / version).rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
        f.truncate(biggest.stat().st_size // 2)
    return target


def make_scratch(tmp_path: Path) -> Path:
    scratch = tmp_path / "case ü ß"
    scratch.mkdir()
    for template in (A_FOLDER, FOREIGN_FOLDER):
        Path(template.format(scratch=scratch)).mkdir()
    (Path(FOREIGN_FOLDER.format(scratch=scratch)) / "notes.txt").write_text("not ours\n")
    Path(A_FILE.format(scratch=scratch)).write_text("some text\n")
    return scratch


def case_argv(case: Case, inputs: dict, scratch: Path) -> tuple[list[str], str]:
    """The case's command line, and the bad value as it appears in it (a damaged input: the copy's path)."""
    leaf = BY_NAME[case.leaf]
    if case.damaged:
        copy = damaged_copy(inputs[case.value], scratch)
        values = {k: resolve(v, scratch, {**inputs, case.value: copy}) for k, v in BASELINES[case.leaf].items()}
        return argv_of(leaf, values), str(copy.parent)
    values = {k: resolve(v, scratch, inputs) for k, v in BASELINES[case.leaf].items()}
    value = resolve(case.value, scratch, inputs)
    given = value
    if case.option in ("overrides", "stage_args") and not case.recipe_key:  # one more item of the list
        given = values.get(case.option, []) + [value]
    return argv_of(leaf, values, case.option, given, case.recipe_key), value


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_refused(case, inputs, tmp_path):
    """The command line: exit 2, one line naming the option or file, nothing written; then the same options
    through ``longvlm.api``: the project's error (``LongVLMError``) with the same message."""
    from longvlm.cli import parse_args
    from megatron_vlm.errors import LongVLMError

    scratch = make_scratch(tmp_path)
    argv, value = case_argv(case, inputs, scratch)
    before = snapshot(scratch, *inputs["roots"])
    result = run_cli(argv, scratch, LIMIT_S)
    assert not result.timed_out, f"{argv}: {result.err[-2000:]}still running after {LIMIT_S} s"
    lines = result.err.splitlines()
    assert result.code == 2 and len(lines) == 1, f"exit {result.code}: {' | '.join(lines[-4:])[-600:]}"
    prefix = f"longvlm {case.leaf.split()[0]}"
    assert lines[0].startswith(prefix), lines[0]
    names = [n.replace("{value}", str(value)) for n in case.names]
    assert any(n in lines[0] for n in names), f"{lines[0]!r} names none of {names}"
    assert not changes(before, snapshot(scratch, *inputs["roots"])), changes(before, snapshot(scratch, *inputs["roots"]))

    try:
        namespace, typed = parse_args(argv), True
    except SystemExit:  # argparse refused the value: the API gets it as the string it is
        leaf = BY_NAME[case.leaf]
        base = {k: resolve(v, scratch, inputs) for k, v in BASELINES[case.leaf].items()}
        namespace, typed = parse_args(argv_of(leaf, base)), False
        action = next(a for a in BY_NAME[case.leaf].parser._actions if case.option in (a.dest, *a.option_strings))
        setattr(namespace, action.dest, [value] if action.nargs in ("+", "*") or
                isinstance(action, argparse._AppendAction) else value)
    error, timed_out = run_api(api_function(BY_NAME[case.leaf], namespace), scratch, LIMIT_S)
    assert not timed_out, f"the API call is still running after {LIMIT_S} s"
    assert isinstance(error, LongVLMError), f"the API raised {error!r}, not a LongVLMError"
    assert "\n" not in str(error), str(error)
    if typed:
        assert lines[0].split(": error: ", 1)[1] == str(error), (lines[0], str(error))
    else:
        assert any(n in str(error) for n in names + [action.dest]), f"{error} names none of {names}"
    assert not changes(before, snapshot(scratch, *inputs["roots"])), "the API call wrote"


@pytest.mark.parametrize("case", [c for c in ACCEPTED_CASES if c.leaf in CHEAP],
                         ids=[c.id for c in ACCEPTED_CASES if c.leaf in CHEAP])
def test_accepted_values_of_cheap_commands_run(case, inputs, tmp_path):
    scratch = make_scratch(tmp_path)
    argv, _ = case_argv(case, inputs, scratch)
    result = run_cli(argv, scratch, LIMIT_S)
    assert not result.timed_out, f"{argv}: still running after {LIMIT_S} s"
    assert result.code in (0, 1) and "Traceback" not in result.err, f"{argv}: exit {result.code}\n{result.err[-3000:]}"


def test_every_string_option_is_classified():
    """A new option whose value is a path or text must say which (PATHS or TEXT), so that it gets its cases."""
    unknown = []
    for leaf in LEAVES:
        for action in leaf.options():
            name = action_name(action)
            if action.choices is None and action.type not in (int, float) and path_kind(leaf.name, name) is None:
                unknown.append(f"{leaf.name} {name}")
    for key, tp in recipe_keys():
        if tp is str and path_kind("train", key) is None:
            unknown.append(f"train {key}")
    assert not unknown, f"add these to PATHS or TEXT in {__file__}: {unknown}"


def test_every_baseline_and_table_entry_is_used():
    """A renamed or removed option leaves no stale entry behind."""
    assert set(BASELINES) == set(BY_NAME)

    ids = {c.id for c in CASES}
    assert not [k for k in ACCEPTED if not (k in ids or k.startswith("* ") and any(i.endswith(" " + k[2:])
                                                                                 for i in ids))]
    options = {f"{leaf.name} {action_name(a)}" for leaf in LEAVES for a in leaf.options()}
    options |= {f"train {key}" for key, _ in recipe_keys()}
    stale = [k for k in [*PATHS, *TEXT] if not (k in options or k.startswith("* ") and any(
        o.endswith(" " + k[2:]) for o in options))]
    assert not stale, f"PATHS / TEXT entries that match no option: {stale}"


def test_readme_states_the_number_of_cases():
    text = (REPO / "README.md").read_text()
    match = re.search(r"([\d,]+)\s+generated\s+bad\s+inputs", text)
    assert match, "README.md states the number of generated bad inputs ('N generated bad inputs')"
    assert int(match[1].replace(",", "")) == len(REFUSED), \
        f"README.md says {match[1]} generated bad inputs, the tests try {len(REFUSED)}: update README.md"




RENAMED = [  # (command line with an old spelling, the API call with it, the new name)
    (["build", "t.jsonl", "--pool", "p", "--tokenizer", "x", "-o", "o", "--max-seq-len", "4"],
     lambda api: api.build(tasks=["t.jsonl"], pool="p", tokenizer="x", output="o", max_seq_len=4), "seq-length"),
    (["tune", "x", "--gpus", "8", "--seq-len", "4"], lambda api: api.tune(model="x", gpus=8, seq_len=4), "seq-length"),
    (["eval", "niah", "--tokenizer", "x", "-o", "o", "--rope-ntk-length", "64K"],
     lambda api: api.evaluate("niah", tokenizer="x", output="o", rope_ntk_length="64K"), "rope-target-length"),
]


@pytest.mark.parametrize("argv, call, new", RENAMED, ids=[a[0] for a, _, _ in RENAMED])
def test_a_renamed_option_is_refused_with_its_new_name(argv, call, new, tmp_path, monkeypatch, capsys):
    from longvlm import api
    from longvlm.cli import main

    monkeypatch.chdir(tmp_path)
    old = next(a for a in argv if a.startswith("--") and a[2:] not in ("pool", "tokenizer", "gpus"))
    with pytest.raises(SystemExit) as stop:  # argparse's refusal
        main(argv)
    assert stop.value.code == 2 and f"{old} is now --{new}" in capsys.readouterr().err
    with pytest.raises(TypeError, match=f"{old[2:].replace('-', '_')} is now {new.replace('-', '_')}"):
        call(api)
    assert not any(tmp_path.iterdir())
