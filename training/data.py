"""The run's data: the built datasets checked against the model, and this rank's micro-batch loaders.

Every rank iterates its own loader (all pipeline stages need a micro-batch's lengths, positions and
segment boundaries); ranks of one data-parallel group read the same rows. Pages are decoded only on
the first pipeline stage, each rank a 1/(TP x CP) share (``megatron_vlm.data.image_share``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core import parallel_state as ps

from megatron_vlm.data.dataset import BuiltDataset
from megatron_vlm.data.image_share import ImageShare
from megatron_vlm.data.loader import build_data_loader
from megatron_vlm.errors import LongVLMError
from megatron_vlm.formats.dataset import dataset_family, max_samples_per_pack, row_length
from megatron_vlm.models.hf_config import VLArch
from megatron_vlm.parallel import ParallelLayout, TokenPadding
from training.config import RecipeError, TrainConfig

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json")


@dataclass(frozen=True)
class DataPlan:
    """What the datasets imply for the run: the longest row, the steps and rows per step."""

    seq_length: int
    steps: int
    global_batch_size: int
    max_samples_per_row: int = 1

    @property
    def total_samples(self) -> int:
        return self.steps * self.global_batch_size


def _tokenizer_hashes(directory: str | None) -> dict[str, str]:
    from megatron_vlm.utils.hashing import sha256_file

    if not directory or not Path(directory).is_dir():
        return {}
    return {n: sha256_file(Path(directory) / n) for n in TOKENIZER_FILES if (Path(directory) / n).is_file()}


def check_vocabulary(key: str, built: dict, arch: VLArch) -> None:
    """A model without tokenizer files of its own: the tokenizer the dataset recorded (``inputs.tokenizer``:
    its folder and the files' hashes) must still be there and fit the model's config.json: its vocabulary
    within the embedding, and the vision tokens at the ids the model uses."""
    from megatron_vlm.utils.hashing import sha256_file

    where = Path(built.get("path", ""))
    recorded = built.get("sha256", {})
    if "tokenizer.json" not in recorded or not (where / "tokenizer.json").is_file() or any(
            not (where / n).is_file() or sha256_file(where / n) != h for n, h in recorded.items()):
        raise RecipeError(f"{key}: the model has no tokenizer files ({', '.join(TOKENIZER_FILES)}) and the tokenizer "
                          f"the dataset was built with ({where}) is gone or changed, so the two cannot be compared; "
                          "copy the model's tokenizer files into its folder")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(where / "tokenizer.json"))
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    special = {"<|image_pad|>": arch.image_token_id, "<|vision_start|>": arch.vision_start_token_id,
               "<|vision_end|>": arch.vision_end_token_id}
    wrong = [f"{t} is {tokenizer.token_to_id(t)}, the model's {i}" for t, i in special.items()
             if tokenizer.token_to_id(t) != i]
    if size > arch.vocab_size or wrong:
        problem = "; ".join(wrong) or f"{size:,} tokens, more than the model's vocab_size {arch.vocab_size:,}"
        raise RecipeError(f"{key}: the dataset was built with a tokenizer ({where}) that does not fit the model "
                          f"({problem}); rebuild it with the model's tokenizer")


def plan_data(config: TrainConfig, arch: VLArch, context_length: int, tokenizer_dir: str | None) -> DataPlan:
    """Check the datasets against the model (its ``context_length``: ``RopeSettings.context_length``) and the
    layout (before any work); the run's plan."""
    if config.data.pool_dir is not None and not Path(config.data.pool_dir).is_dir():
        raise RecipeError(f"data.pool_dir={config.data.pool_dir}: no such folder")
    metas, prefixes = {}, dict([(f"data.train[{i}].prefix", s.prefix) for i, s in enumerate(config.data.train)]
                               + ([("data.valid", config.data.valid)] if config.data.valid else []))
    for key, prefix in prefixes.items():
        try:  # every file checked (sizes, counts, checksums), the pool's too: nothing is found damaged later
            metas[key] = BuiltDataset(prefix, pool_dir=config.data.pool_dir, decode_images=True).meta
        except LongVLMError as err:
            raise RecipeError(f"{key}: {err}") from None
    model_tokens = _tokenizer_hashes(tokenizer_dir)
    longest = 0
    for key, meta in metas.items():
        if dataset_family(meta) != arch.model_type:
            raise RecipeError(f"{key}: the dataset was built for {dataset_family(meta)}, the model is {arch.model_type} "
                              f"({arch.family.name}); rebuild it with 'longvlm build --family {arch.model_type} "
                              "--tokenizer MODEL_TOKENIZER ...' (the same pool works)")
        built = meta["inputs"]["tokenizer"]
        if model_tokens:
            differ = sorted(n for n in set(built["sha256"]) & set(model_tokens) if built["sha256"][n] != model_tokens[n])
            if differ:
                raise RecipeError(f"{key}: the dataset was built with another tokenizer than the model's "
                                  f"({', '.join(differ)} differ from {tokenizer_dir}); rebuild it with "
                                  f"'longvlm build --tokenizer {tokenizer_dir}'")
        else:
            check_vocabulary(key, built, arch)
        longest = max(longest, row_length(meta))
    seq_length = config.seq_length(longest)
    if longest > seq_length:
        raise RecipeError(f"train.seq_length={seq_length:,} is shorter than the datasets' rows (up to {longest:,} "
                          "tokens); raise it or leave it unset")
    if seq_length > context_length:
        raise RecipeError(f"train.seq_length / data: rows of {seq_length:,} tokens are longer than the model's "
                          f"context length {context_length:,} (model.rope.target_length, else the checkpoint's "
                          "max_position_embeddings); raise model.rope.target_length (with "
                          "model.rope.mode=ntk for the base) or build shorter rows")
    samples = max(max_samples_per_pack(prefixes[key], meta) for key, meta in metas.items())
    return DataPlan(seq_length, config.steps(seq_length), config.train.global_batch_size, samples)


def token_padding(config: TrainConfig) -> TokenPadding:
    """How this run pads a micro-batch's stream (context parallelism, sequence parallelism, FP8)."""
    return config.parallel.token_padding(fp8=config.train.precision == "fp8")


def fixed_length(config: TrainConfig, plan: DataPlan) -> int | None:
    """``None``: each micro-batch at its own length. The interleaved pipeline schedule (``parallel.vpp``)
    needs one length for all (its prefetching receives cannot learn a shape): the longest a micro-batch
    can be, ``micro_batch_size`` rows of ``train.seq_length`` tokens with every sample padded."""
    if not config.parallel.vpp:
        return None
    padding = token_padding(config)
    rows = config.train.micro_batch_size
    longest = rows * (plan.seq_length + plan.max_samples_per_row * (padding.sample - 1))
    return -(-longest // padding.stream) * padding.stream


def stream_length(config: TrainConfig, plan: DataPlan) -> int:
    """The length of a micro-batch's stream: fixed (interleaved schedule), else the longest it can be."""
    return fixed_length(config, plan) or config.train.micro_batch_size * plan.seq_length


def image_share(layout: ParallelLayout) -> ImageShare:
    """This rank's share of page decoding (none off the first pipeline stage)."""
    return ImageShare(decode=ps.is_pipeline_first_stage(ignore_virtual=True),
                      cp_size=layout.cp, cp_rank=ps.get_context_parallel_rank(),
                      tp_size=layout.tp, tp_rank=ps.get_tensor_model_parallel_rank())


def train_loader(config: TrainConfig, plan: DataPlan, consumed_samples: int) -> torch.utils.data.DataLoader:
    """This rank's micro-batches of the rest of the run (from ``consumed_samples`` rows on)."""
    return build_data_loader(
        [s.prefix for s in config.data.train], config.train.micro_batch_size,
        weights=[s.weight for s in config.data.train], padding=token_padding(config),
        length=fixed_length(config, plan),
        dp_rank=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size(), seed=config.train.seed,
        consumed_samples=consumed_samples, total_samples=plan.total_samples, num_workers=config.data.num_workers,
        prefetch_factor=config.data.prefetch, share=image_share(config.parallel), pool_dir=config.data.pool_dir,
        worker_ignored_signals=config.checkpoint.exit_signals)  # the rank saves on them; its workers must not die


def valid_loader(config: TrainConfig, plan: DataPlan) -> torch.utils.data.DataLoader:
    """This rank's micro-batches of one validation pass (the same rows every time, in file order)."""
    rows = config.logging.eval_batches * config.train.micro_batch_size * ps.get_data_parallel_world_size()
    return build_data_loader(
        config.data.valid, config.train.micro_batch_size, padding=token_padding(config),
        length=fixed_length(config, plan),
        dp_rank=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size(), shuffle=False,
        total_samples=rows, num_workers=0, share=image_share(config.parallel), pool_dir=config.data.pool_dir)
