"""``--backend hf`` end to end on a tiny Qwen2.5-VL (CPU, fp32), against an independent reference:
transformers' own image processor and chat template, one prompt at a time (no batching, no padding)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from evaluation import docqa, niah
from evaluation.config import DocQAConfig, NiahConfig
from evaluation.prompt import PromptBuilder
from evaluation.run import run_task
from evaluation.scoring import needle_score, score_answer
from longvlm import api, cli

MAX_NEW = 6


def _save(path, seed: int = 0, **overrides):
    from helpers.vlm_inputs import randomize_weights_
    from transformers import Qwen2_5_VLForConditionalGeneration

    from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config

    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen25vl_config(**overrides)).eval()
    randomize_weights_(model, seed)  # O(1) activations: outputs depend on every input token and pixel
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("tiny_eval"))


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()


def reference_inputs(request, tokenizer, answer: str | None = None) -> dict:
    """The request's prompt made by transformers alone: its image processor on the page images, the
    tokenizer's chat template on the request's chat messages, one <|image_pad|> per merged patch."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from preprocess.dataset.render_sample import chat_messages

    images = [page.pixels() for page in request.pages]
    vision = Qwen2VLImageProcessorPil(max_pixels=12845056)(images=images, return_tensors="pt")
    messages = chat_messages(request.question, answer, len(images), True, **request.context.layout())
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)
    for grid in vision["image_grid_thw"]:
        text = text.replace("<|image_pad|>", "<|placeholder|>" * int(grid.prod() // 4), 1)
    ids = tokenizer(text.replace("<|placeholder|>", "<|image_pad|>"), return_tensors="pt")["input_ids"]
    return {"input_ids": ids, "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}


def greedy(model, inputs: dict, tokenizer, max_new: int = MAX_NEW) -> str:
    """Greedy continuation of one prompt alone (batch of one: no padding, no batching)."""
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=max_new, eos_token_id=[151645, 151643],
                              pad_token_id=151643)
    ids = inputs["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                             mm_token_type_ids=(ids == 151655).int(), generation_config=config)
    new = [t for t in out[0, ids.shape[1]:].tolist()]
    stop = next((k for k, t in enumerate(new) if t in (151645, 151643)), len(new))
    return tokenizer.decode(new[:stop], skip_special_tokens=True)


def answer_logprob(model, inputs: dict, tokenizer, answer: str) -> tuple[float, int, float]:
    """Sum of log p of the answer tokens and the closing <|im_end|> (the sequence ends '<|im_end|>\\n')."""
    n = len(tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"])
    ids = inputs["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                       mm_token_type_ids=(ids == 151655).int()).logits[0].double()
    end = ids.shape[1] - 1  # the final newline is no target
    targets = ids[0, end - n:end]
    logp = torch.log_softmax(logits[end - n - 1:end - 1], dim=-1)
    picked = logp.gather(1, targets[:, None])[:, 0]
    return float(picked.sum()), n, float((logits[end - n - 1:end - 1].argmax(-1) == targets).double().mean())


def _niah_options(small_pool, checkpoint, qwen_tokenizer_dir, out, **kw):
    return dict(pool=str(small_pool), checkpoint=str(checkpoint), tokenizer=str(qwen_tokenizer_dir), output=str(out),
                lengths=["600", "1000"], depths=[0.5], max_new_tokens=MAX_NEW, batch_size=3, progress=False, samples=1,
                **kw)


@pytest.mark.slow
def test_niah_end_to_end_matches_reference_and_resumes(tmp_path, small_pool, checkpoint, hf_model, qwen_tokenizer,
                                                       qwen_tokenizer_dir, capsys):
    out = tmp_path / "niah"
    opts = _niah_options(small_pool, checkpoint, qwen_tokenizer_dir, out)
    argv = ["eval", "niah", "--pool", opts["pool"], "--checkpoint", opts["checkpoint"], "--tokenizer",
            opts["tokenizer"], "-o", str(out), "--lengths", "600", "1000", "--depths", "0.5", "--max-new-tokens",
            str(MAX_NEW), "--batch-size", "3", "--samples", "1", "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "needle: image" in printed and "needle: text" in printed and "heatmap.png" in printed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2
    requests = {r.id: r for r in niah.requests(NiahConfig(**opts), PromptBuilder(qwen_tokenizer))}
    for row in rows:
        request = requests[row["id"]]
        assert row["prompt_tokens"] == request.num_tokens and abs(row["prompt_tokens"] - row["length"]) <= 0.01 * row["length"]
        assert row["prediction"] == greedy(hf_model, reference_inputs(request, qwen_tokenizer), qwen_tokenizer)
        assert row["score"] == needle_score(row["answer"], row["prediction"])
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["lengths"] == ["600", "1000"] and results["rope"]["mode"] == "keep"
    assert results["backend"]["name"] == "hf" and results["backend"]["decoding"] == "greedy"
    cell = [r["score"] for r in rows if r["mode"] == "text" and r["length"] == 1000 and r["depth"] == 0.5]
    assert results["summary"]["grid"]["text"]["1000"]["0.5"] == sum(cell) / len(cell)
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a rerun has nothing to do: the backend is not even asked
    class Refuses:
        primary = True

        def run(self, requests, mode):
            raise AssertionError(f"asked to run {len(requests)} finished examples")

    before = (out / "results.jsonl").read_bytes()
    run_task("niah", NiahConfig(**opts), backend=Refuses())
    assert (out / "results.jsonl").read_bytes() == before

    # a killed run (2 rows lost, the last one torn) resumes with exactly the missing examples
    lines = before.decode().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:2]) + lines[2][:20])
    from evaluation.backends.hf import HFBackend

    asked = []

    class Counting(HFBackend):
        def run(self, requests, mode):
            asked.extend(r.id for r in requests)
            return super().run(requests, mode)

    config = NiahConfig(**opts)
    backend = Counting.from_options(config, run_task_rope(config), PromptBuilder(qwen_tokenizer), str(out))
    result = run_task("niah", config, backend=backend)
    assert sorted(asked) == sorted(json.loads(x)["id"] for x in lines[2:])
    assert sorted(r["id"] for r in result.rows) == sorted(r["id"] for r in rows)
    again = {json.loads(x)["id"]: json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()}
    assert {k: v["prediction"] for k, v in again.items()} == {r["id"]: r["prediction"] for r in rows}

    # other result-determining options: refused, not mixed into these results
    with pytest.raises(Exception, match="holds results of another run"):
        api.evaluate("niah", **{**opts, "seed": 1})


def run_task_rope(config):
    from evaluation.rope import resolve_rope

    return resolve_rope(config)


def _docqa_input(tmp_path, pool_dir, n: int = 3):
    from megatron_vlm.formats.pool import Pool

    pool = Pool.open(pool_dir)
    float_id, booktabs_id = (d["doc_id"] for d in pool.documents)
    rows = [{"doc": float_id, "question": "How many floats are there?", "answer": "3", "answer_format": "Int",
             "evidence_pages": [2]},
            {"doc": booktabs_id, "question": "Which command draws the top rule?", "answer": "toprule",
             "evidence_pages": [1, 3]},
            {"doc": booktabs_id, "question": "Who reviewed it?", "answer": "Not answerable", "answer_format": "None",
             "evidence_pages": []}]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    return path


def _docqa_options(tmp_path, small_pool, checkpoint, qwen_tokenizer_dir, n: int = 3, **kw):
    return dict(input=str(_docqa_input(tmp_path, small_pool, n)), pool=str(small_pool), checkpoint=str(checkpoint),
                tokenizer=str(qwen_tokenizer_dir), max_context="700", max_new_tokens=MAX_NEW, progress=False, **kw)


def test_docqa_end_to_end_matches_reference(tmp_path, small_pool, checkpoint, hf_model, qwen_tokenizer,
                                            qwen_tokenizer_dir):
    opts = _docqa_options(tmp_path, small_pool, checkpoint, qwen_tokenizer_dir, output=str(tmp_path / "out"))
    result = api.evaluate("docqa", **opts)
    assert result.failed == 0 and len(result.rows) == 3
    requests = {r.id: r for r in docqa.requests(DocQAConfig(**opts), PromptBuilder(qwen_tokenizer))}
    for row in result.rows:
        request = requests[row["id"]]
        assert row["prompt_tokens"] <= 700 and row["pages_dropped"] > 0
        assert row["prediction"] == greedy(hf_model, reference_inputs(request, qwen_tokenizer), qwen_tokenizer)
        assert row["score"] == score_answer(row["answer"], row["prediction"], row["answer_format"])
    summary = result.summary
    assert summary["n"] == 3 and summary["acc"] == pytest.approx(sum(r["score"] for r in result.rows) / 3)
    assert summary["page_markers"] is True and summary["truncated"] == 3
    assert "Acc" in result.report and "page markers: on" in result.report


def test_teacher_forcing_equals_transformers_logits(tmp_path, small_pool, checkpoint, hf_model, qwen_tokenizer,
                                                    qwen_tokenizer_dir):
    opts = _docqa_options(tmp_path, small_pool, checkpoint, qwen_tokenizer_dir, output=str(tmp_path / "tf"),
                          scoring="teacher-forcing", batch_size=3)
    result = api.evaluate("docqa", **opts)
    requests = {r.id: r for r in docqa.requests(DocQAConfig(**opts), PromptBuilder(qwen_tokenizer))}
    for row in result.rows:  # batched, right-padded, answer positions only vs one full forward each
        request = requests[row["id"]]
        logprob, n, accuracy = answer_logprob(hf_model, reference_inputs(request, qwen_tokenizer, request.answer),
                                              qwen_tokenizer, request.answer)
        assert row["answer_tokens"] == n and "prediction" not in row
        assert row["answer_logprob"] == pytest.approx(logprob, abs=1e-4)
        assert row["answer_token_accuracy"] == pytest.approx(accuracy)
    tokens = sum(r["answer_tokens"] for r in result.rows)
    assert result.summary["answer_logprob_per_token"] == pytest.approx(
        sum(r["answer_logprob"] for r in result.rows) / tokens)


def test_megatron_backend_teacher_forcing_equals_transformers_logits(tmp_path, small_pool, checkpoint, hf_model,
                                                                    qwen_tokenizer, qwen_tokenizer_dir, convert_to_megatron):
    """``--backend megatron`` on the converted checkpoint (the training model and its forward-only pass)
    gives the answer log-likelihood and token accuracy that transformers' logits give (fp32, 1e-4)."""
    megatron = convert_to_megatron(checkpoint, 1, 1)
    opts = _docqa_options(tmp_path, small_pool, megatron, qwen_tokenizer_dir, output=str(tmp_path / "meg"),
                          scoring="teacher-forcing", backend="megatron", batch_size=2)
    result = api.evaluate("docqa", **opts)
    assert result.failed == 0 and len(result.rows) == 3
    assert json.loads((tmp_path / "meg" / "results.json").read_text())["backend"]["layout"]["tp"] == 1
    requests = {r.id: r for r in docqa.requests(DocQAConfig(**opts), PromptBuilder(qwen_tokenizer))}
    for row in result.rows:
        request = requests[row["id"]]
        logprob, n, accuracy = answer_logprob(hf_model, reference_inputs(request, qwen_tokenizer, request.answer),
                                              qwen_tokenizer, request.answer)
        assert row["answer_tokens"] == n
        assert row["answer_logprob"] == pytest.approx(logprob, abs=1e-4)
        assert row["answer_token_accuracy"] == pytest.approx(accuracy)


@pytest.mark.slow
def test_megatron_backend_at_tp2_and_cp2_equals_one_process(tmp_path, small_pool, checkpoint, qwen_tokenizer_dir,
                                                            convert_to_megatron):
    from helpers.distributed import run_distributed

    megatron = convert_to_megatron(checkpoint, 1, 1)
    opts = _docqa_options(tmp_path, small_pool, megatron, qwen_tokenizer_dir, scoring="teacher-forcing",
                          backend="megatron", batch_size=1)
    rows = {}
    for name, layout in (("one", []), ("tp2", ["--tp", "2"]), ("cp2", ["--cp", "2"])):
        out = tmp_path / name
        args = ["eval", "docqa", opts["input"], "--pool", opts["pool"], "--checkpoint", opts["checkpoint"],
                "--tokenizer", opts["tokenizer"], "--max-context", "700", "--scoring", "teacher-forcing",
                "--backend", "megatron", "--batch-size", "1", "--no-progress", "-o", str(out), *layout]
        run_distributed("longvlm", 1 if name == "one" else 2, args, timeout=400)
        rows[name] = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    for name in ("tp2", "cp2"):
        assert rows[name].keys() == rows["one"].keys()
        for key, row in rows[name].items():
            assert row["answer_logprob"] == pytest.approx(rows["one"][key]["answer_logprob"], abs=1e-4)
            assert row["answer_token_accuracy"] == rows["one"][key]["answer_token_accuracy"]


@pytest.mark.slow
def test_rope_overrides_apply_to_the_model_and_are_recorded(tmp_path, small_pool, checkpoint, qwen_tokenizer_dir):
    # the same weights saved with rope_theta 5e4: an independent way to get that base
    other = _save(tmp_path / "theta5e4", rope_theta=5e4)
    logprob = {}
    for name, ckpt, kw in (("keep", checkpoint, {}), ("override", checkpoint, {"rope_base": 5e4}),
                           ("saved", other, {})):
        opts = _docqa_options(tmp_path, small_pool, ckpt, qwen_tokenizer_dir, n=2, output=str(tmp_path / name),
                              scoring="teacher-forcing", **kw)
        result = api.evaluate("docqa", **opts)
        logprob[name] = [r["answer_logprob"] for r in result.rows]
        recorded = json.loads((tmp_path / name / "results.json").read_text())["rope"]
        assert recorded["base"] == (5e4 if name != "keep" else 1e6)
        assert recorded["mode"] == ("explicit" if name == "override" else "keep")
    assert logprob["override"] == pytest.approx(logprob["saved"], abs=1e-5)
    assert max(abs(a - b) for a, b in zip(logprob["override"], logprob["keep"])) > 1e-3

    from evaluation.rope import resolve_rope

    config = DocQAConfig(**_docqa_options(tmp_path, small_pool, checkpoint, qwen_tokenizer_dir, output="x",
                                          rope_target_length="128K"))
    rope = resolve_rope(config)
    head_dim = 16  # tiny: hidden 64 / 4 heads
    assert rope.base == pytest.approx(1e6 * 4 ** (head_dim / (head_dim - 2)))
    assert (rope.mode, rope.target_length, rope.original_length) == ("ntk", 131072, 32768)
    assert rope.megatron_kwargs()["rope"].resolve(1e6, head_dim) == rope.base
    assert not math.isclose(rope.base, 1e6)


def test_length_batches_group_similar_lengths():
    from evaluation.backends.hf import length_batches

    batches = length_batches([100, 900, 120, 880, 5000, 110], batch_size=2, max_batch_tokens=2000)
    assert batches == [[4], [1, 3], [2, 5], [0]]
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
