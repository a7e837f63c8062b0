"""``longvlm study``: the paper's experiment files, artifacts shared by content, clear refusals, the
SLURM chain's first jobs, and (slow) two contrasting experiments end to end in miniature."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from launch.study.experiment import StudyError, load_experiment
from launch.study.plan import plan
from longvlm import api
from longvlm.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "recipes" / "study"
DATA = {"mmlongbench": "a.json", "mmlongbench_pdfs": "docs", "slidevqa": "s.jsonl", "slidevqa_images": "img",
        "longdocurl": "l.jsonl", "longdocurl_pdfs": "pdfs", "short_instruct": "short.json", "mmniah": "mmniah"}


def inputs(pool="pool", tokenizer="tok", base="base", **data) -> list[str]:
    return [f"inputs.pool={pool}", f"inputs.tokenizer={tokenizer}", f"inputs.base_model={base}", "synth.model=qa",
            *(f"inputs.data.{k}={v}" for k, v in {**DATA, **data}.items())]


def test_the_papers_experiments_load_and_say_what_they_mirror():
    files = sorted(p for p in STUDY.glob("*.yaml") if not p.name.startswith("_"))
    loaded = {load_experiment(f, inputs()).name: load_experiment(f, inputs()) for f in files}
    assert set(loaded) >= {"task-extract-single", "task-extract-multi", "task-reasoning", "task-ocr-full",
                           "task-ocr-needle", "length-pool-native", "length-long-biased", "mixture-retrieval-heavy",
                           "mixture-reasoning-heavy", "short-none", "short-mixed", "rope-original", "rope-ntk",
                           "mmprolong"}
    assert all(e.paper.startswith("Section") for e in loaded.values())
    # values the paper's text does not give are said so, with what is used
    for name in ("length-long-biased", "mixture-reasoning-heavy", "short-mixed", "task-ocr-full"):
        assert loaded[name].notes, name
    assert loaded["length-long-biased"].build["length_dist"] == "long-biased"
    assert loaded["mixture-retrieval-heavy"].build["mixture"] == "extract-single=0.4,extract-multi=0.4,reasoning=0.2"
    assert loaded["short-mixed"].build["short_share"] == 0.2 and loaded["short-mixed"].build["short_data"] == ["short.json"]
    assert loaded["task-ocr-needle"].sft.build["short_share"] == 1.0 and loaded["task-reasoning"].sft is None
    assert "model.rope.mode=keep" in loaded["rope-original"].train.overrides
    assert [e.name for e in loaded["mmprolong"].eval] == ["mmlongbench", "slidevqa", "longdocurl", "mmniah"]
    assert loaded["mmprolong"].eval[0].options["context_lengths"] == ["64K", "128K", "256K", "512K"]


@pytest.mark.parametrize(("text", "extra", "message"), [
    ("build: {mixture_of: x}", [], "build.mixture_of is not an option of longvlm build"),
    ("build: {max_seq_len: 4096}", [], "build.max_seq_len is now build.seq_length: rename the key"),
    ("build: {output: x}", [], "build.output is not an option of longvlm build that an experiment sets"),
    ("eval: [{name: a, task: vqa}]", [], "task 'vqa' is not one of niah, docqa, mmniah"),
    ("eval: [{name: a, task: docqa, options: {checkpoint: x}}]", [], "checkpoint is set by the study"),
    ("colour: red", [], "Key 'colour' not in 'Experiment'"),
    ("", ["inputs.pool"], "not key=value"),
    ("name: 'a b'", [], "must be letters, digits"),
])
def test_bad_experiment_files_name_the_file_and_key(tmp_path, text, extra, message):
    path = tmp_path / "x.yaml"
    path.write_text(f"inherit: {STUDY / 'length-pool-native.yaml'}\n{text}\n")
    with pytest.raises(StudyError, match=message):
        load_experiment(path, inputs() + extra)


def test_refusals_are_one_line_and_write_nothing(tmp_path, capsys):
    loop = tmp_path / "loop.yaml"
    loop.write_text("inherit: loop.yaml\nname: x\n")
    work = tmp_path / "work"
    for args, message in ((["recipes/study/length-pool-native.yaml"], "inputs.pool, inputs.tokenizer"),
                          ([str(STUDY / "length-pool-native.yaml"), *inputs()[:4]], "inputs.data.mmlongbench=..."),
                          ([str(loop)], "'inherit' goes in a circle"),
                          ([str(STUDY / "length-pool-native.yaml"), *inputs(pool=str(tmp_path / "nope"))],
                           "inputs.pool"),
                          (["k=v"], "give at least one experiment file")):
        assert cli_main(["study", "run", *args, "--work", str(work)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert cli_main(["study", "run", str(STUDY / "mmprolong.yaml"), "--nproc-per-node", "0", "--work", str(work)]) == 2
    assert "--nproc-per-node must be >= 1" in capsys.readouterr().err
    assert not work.exists()


@pytest.fixture(scope="module")
def study_inputs(small_pool, qwen_tokenizer_dir, tiny_hf_checkpoint, tmp_path_factory) -> list[str]:
    """Real pool, tokenizer and model; stand-ins for the benchmark files (planning fingerprints them)."""
    data = tmp_path_factory.mktemp("benchmarks")
    for name in DATA.values():
        (data / name).write_text(name)
    return inputs(str(small_pool), str(qwen_tokenizer_dir), str(tiny_hf_checkpoint),
                  **{k: str(data / v) for k, v in DATA.items()})


def test_artifacts_are_named_by_what_makes_them(study_inputs, tmp_path):
    def keys(name: str, *extra: str) -> dict[str, str]:
        return {s.stage: s.key for s in plan(load_experiment(STUDY / f"{name}.yaml", [*study_inputs, *extra]), tmp_path)}

    native, biased = keys("length-pool-native"), keys("length-long-biased")
    assert native["synth"] == biased["synth"]  # the same tasks, synthesized once
    assert native["build"] != biased["build"] and native["train"] != biased["train"]
    assert keys("mixture-retrieval-heavy") == native  # the same recipe as the final one: nothing made twice
    assert keys("mixture-reasoning-heavy")["build"] != native["build"]
    original, ntk = keys("rope-original"), keys("rope-ntk")
    assert original["build"] == ntk["build"] and original["train"] != ntk["train"]
    ocr = keys("task-ocr-needle")
    assert list(ocr) == ["synth", "build", "train", "sft-build", "sft-train", "export", "eval-mmlongbench",
                         "eval-slidevqa", "eval-longdocurl"]
    assert ocr["synth"] != native["synth"]
    # options that do not change the artifact (build workers) keep its key; those that do change it
    assert keys("length-pool-native", "build.workers=4") == native
    assert keys("length-pool-native", "build.seed=7")["build"] != native["build"]


def test_slurm_writes_the_jobs_that_can_start(study_inputs, tmp_path):
    files = [str(STUDY / "length-pool-native.yaml"), str(STUDY / "length-long-biased.yaml")]
    api.study("run", files, study_inputs, work=str(tmp_path / "w"), slurm=True, partition="cpu", gpus_per_node=0)
    scripts = sorted((tmp_path / "w" / "slurm").glob("*.sbatch"))
    assert [p.name.split("-")[0] for p in scripts] == ["synth"]  # the one shared synth step; builds wait for it
    text = scripts[0].read_text()
    assert "#SBATCH --partition=cpu" in text
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    assert "study run" in srun and "--only synth --slurm --partition cpu" in srun and files[1] in srun


# -- end to end, in miniature -------------------------------------------------------------------------
@pytest.mark.slow
def test_two_contrasting_experiments_end_to_end(small_pool, tmp_path):
    """pool-native vs long-biased in miniature (``longvlm demo --study``): the report shows the long-biased
    data holding far more near-maximum-length examples; a rerun reuses every artifact; a lost step reruns."""
    out = tmp_path / "demo"
    records = api.demo(output=str(out), pool=str(small_pool), study=["length-pool-native", "length-long-biased"],
                       seq_length=3584, token_budget=3e4, train_steps=2)
    status = {r.name: r.result.split()[0] for r in records if ": " in r.name}
    assert status["length-long-biased: synth"] == "reused"  # synthesized once for both
    assert all(v == "ran" for k, v in status.items() if k != "length-long-biased: synth")
    with open(out / "study" / "report.csv") as f:
        rows = {r["experiment"]: r for r in csv.DictReader(f)}
    native, biased = rows["length-pool-native"], rows["length-long-biased"]
    # the 2-document pool: float (12 pages, ~2.2K tokens a sample) and booktabs (18 pages, ~3.2K); long =
    # >= 2,734 tokens (100K of 128K scaled to 3,584-token rows): half the pool-native examples, 83.9% targeted
    assert 0.3 < float(native["long share"]) < 0.6 and float(biased["long share"]) >= 0.8
    assert float(biased["mean len"]) > float(native["mean len"])
    assert native["docqa answer log-lik/token"] and biased["docqa answer log-lik/token"]
    assert (out / "study" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| length-long-biased |" in (out / "study" / "report.md").read_text()

    files = sorted(str(p) for p in (out / "study" / "experiments").glob("*.yaml"))
    again = api.study("run", files, work=str(out / "study"))
    assert {r.status for r in again} == {"reused"}
    # what a --slurm chain checks before it marks a training job's step done
    from launch.study.slurm import train_finished

    train = next(s for s in plan(load_experiment(files[0]), out / "study") if s.stage == "train")
    assert train_finished(train, out / "study")
    (train.directory(out / "study") / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("1")
    assert not train_finished(train, out / "study")
    (train.directory(out / "study") / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("2")
    record = json.loads((out / "study" / "experiments" / "length-long-biased.json").read_text())
    evaluation = Path(record["steps"]["eval-docqa"]["path"])
    (evaluation / "done.json").unlink()
    shutil.rmtree(evaluation / "results")
    again = api.study("run", files, work=str(out / "study"))
    assert [(r.experiment, r.stage) for r in again if r.status == "ran"] == [("length-long-biased", "eval-docqa")]


def test_study_options_refused_before_anything_is_written(study_inputs, tmp_path, capsys):
    file = str(STUDY / "length-pool-native.yaml")
    (tmp_path / "afile").write_text("x")
    for argv, message in ((["--only", "training"], "--only training: not a stage of these experiments"),
                          (["--work", str(tmp_path / "afile")], "not a directory"),
                          (["--slurm", "--nodes", "0"], "--nodes must be >= 1"),
                          (["--slurm", "--env", "NOVALUE"], "--env 'NOVALUE': expected KEY=VALUE")):
        argv = argv if "--work" in argv else [*argv, "--work", str(tmp_path / "w")]
        assert cli_main(["study", "run", file, *study_inputs, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "w").exists()
    assert cli_main(["demo", "--study", "no-such-experiment", "-o", str(tmp_path / "d")]) == 2
    assert "choose from length-long-biased" in capsys.readouterr().err
    assert cli_main(["demo", "--study", "rope-ntk", "--pool", str(tmp_path), "-o", str(tmp_path / "d")]) == 2
    assert "not a pool" in capsys.readouterr().err and not (tmp_path / "d").exists()
