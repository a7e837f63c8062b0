"""``Trainer``: wires the components (model, optimizer and schedule, data, checkpoints, metrics, guard,
preemption) into a run, started by torchrun, srun or a plain ``python`` for one process.

Everything that can be checked is checked before any work (:func:`preflight`); then the run
directory is written, the process groups start, the model is built and either resumed from the run's
latest checkpoint or loaded from its starting point, and the loop runs to the step budget.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from megatron_vlm import runtime
from megatron_vlm.data.loader import stop_workers
from megatron_vlm.runtime.transformer_engine import transformer_engine_error, transformer_engine_version
from training.checkpoint import Checkpointer, TrainState, latest_checkpoint
from training.config import RecipeError, TrainConfig, to_yaml
from training.data import DataPlan, image_share, plan_data, stream_length, train_loader, valid_loader
from training.guard import LossGuard, TrainingStopped
from training.metrics import MetricsLogger, peak_flops, warn
from training.model import ModelParts, build_model
from training.optimizer import build_optimizer, build_scheduler
from training.run_dir import StartPoint, check_run_dir, convert_start, start_point, write_config
from training.signals import REQUEUE_EXIT, PreemptionHandler
from training.step import run_schedule


@dataclass(frozen=True)
class Preflight:
    """What the checks found: the starting point, the data plan, the data-parallel size, a resume."""

    start: StartPoint
    plan: DataPlan
    dp: int
    resume: bool


def preflight(config: TrainConfig, run_dir: Path, world_size: int, rank: int = 0, gpu: bool | None = None) -> Preflight:
    """Every check that needs no process group and writes nothing; a ``RecipeError`` naming the key.
    The run directory is checked by rank 0 only (the others may see it while rank 0 writes it).

    ``gpu``: whether the run will have GPUs (default: whether this machine has one); given, the run is
    checked for another machine (a job script written on a login node), so Transformer Engine is not
    looked for here.
    """
    config.check()
    resume = check_run_dir(run_dir, config) if rank == 0 else False  # before the inputs: it is the cheapest check
    layout = config.parallel
    try:
        dp = layout.data_parallel_size(world_size)
    except Exception as err:
        raise RecipeError(f"parallel: {err}") from None
    step_rows = config.train.micro_batch_size * dp
    if config.train.global_batch_size % step_rows:
        raise RecipeError(f"train.global_batch_size {config.train.global_batch_size} is not a multiple of "
                          f"micro_batch_size x data-parallel size = {config.train.micro_batch_size} x {dp}")
    here = gpu is None
    gpu = runtime.use_cuda() if here else gpu
    if config.train.precision != "fp32" and not gpu:
        raise RecipeError(f"train.precision={config.train.precision} needs a GPU (Megatron's mixed-precision "
                          "optimizers take CUDA tensors); use train.precision=fp32 on this machine")
    if here:
        needs = [key for key, used in (("model.transformer_impl=te", config.model.transformer_impl == "te"),
                                       ("model.attention_backend=te", config.model.attention_backend == "te")) if used]
        problem = transformer_engine_error() if needs else None
        if problem:
            raise RecipeError(f"{' and '.join(needs)} need{'s' if len(needs) == 1 else ''} Transformer Engine "
                              f"({problem}); install it with `pip install -e .[gpu]`, or use model.transformer_impl=local, "
                              "model.attention_backend=torch and train.precision bf16")
    start = start_point(config)
    arch = start.arch
    problems = config.backend_problems(arch, transformer_engine_version() if here else None)
    if problems:
        raise RecipeError("; ".join(problems))
    try:
        layout.check_model(arch.num_layers, arch.num_heads, arch.num_query_groups, arch.vision_heads)
        context = config.model.rope.context_length(arch)
        config.model.rope.resolve(arch.rope_theta, arch.head_dim)
    except RecipeError:
        raise
    except Exception as err:
        raise RecipeError(f"parallel / model: {err}") from None
    plan = plan_data(config, arch, context, start.tokenizer_dir)
    return Preflight(start, plan, dp, resume)


class Trainer:
    """One training run in ``run_dir`` (call :meth:`run` on every rank)."""

    def __init__(self, config: TrainConfig, run_dir: str | Path):
        self.config, self.run_dir = config, Path(run_dir)
        env = runtime.read_dist_env()
        self.checked = preflight(config, self.run_dir, env.world_size, env.rank)
        self.rank0 = env.rank == 0

    def run(self) -> int:
        """Train to the step budget; the exit code (0, or ``REQUEUE_EXIT`` after a preemption signal)."""
        # from the start: a signal during start-up (SLURM signals the job's tasks) is saved on at the first step
        signals = PreemptionHandler(self.config.checkpoint.exit_signals)
        try:
            return self._start_and_loop(signals)
        finally:
            signals.close()

    def _start_and_loop(self, signals: PreemptionHandler) -> int:
        config, run_dir, checked = self.config, self.run_dir, self.checked
        if self.rank0:
            write_config(run_dir, config)
            convert_start(checked.start, run_dir)
        runtime.initialize_distributed(config.parallel, seed=config.train.seed)
        torch.distributed.barrier()  # the run directory and init/ exist for everyone
        resuming = latest_checkpoint(run_dir) is not None
        # a fresh run starts from the weights of its starting point; a resumed one from its latest checkpoint
        parts = build_model(config, checked.start.arch, load=None if resuming else checked.start.megatron_dir(run_dir))
        optimizer = build_optimizer(config.optimizer, parts, config.train.precision)
        plan = checked.plan
        scheduler = build_scheduler(config.optimizer, optimizer, plan.steps)
        checkpointer = Checkpointer(run_dir, parts, optimizer, scheduler, keep_last=config.checkpoint.keep_last,
                                    async_save=config.checkpoint.async_save, source=checked.start.source)
        layout_record = {"parallel": asdict(config.parallel), "world_size": torch.distributed.get_world_size()}
        if resuming:
            state = checkpointer.load(layout_record)
            self._say(f"resumed from {checkpointer.root} at step {state.iteration} "
                      f"({state.consumed_samples:,} rows consumed)")
        else:
            state = TrainState()
        state.layout, state.config_yaml = layout_record, to_yaml(config)
        try:
            return self._loop(parts, optimizer, scheduler, checkpointer, state, plan, signals)
        finally:
            checkpointer.finalize(blocking=True)

    def _say(self, message: str) -> None:
        if self.rank0:
            print(message, flush=True)

    def _loop(self, parts: ModelParts, optimizer, scheduler, checkpointer: Checkpointer, state: TrainState,
              plan: DataPlan, signals: PreemptionHandler) -> int:
        config = self.config
        share = image_share(config.parallel)
        num_micro = plan.global_batch_size // (config.train.micro_batch_size * self.checked.dp)
        loader = train_loader(config, plan, state.consumed_samples)
        metrics = MetricsLogger(self.run_dir, plan.steps, enabled=self.rank0, tensorboard=config.logging.tensorboard,
                                log_interval=config.logging.log_interval, resume_from=state.iteration,
                                world_size=torch.distributed.get_world_size(),
                                peak_flops=peak_flops(config.logging.peak_tflops, config.train.precision),
                                device="GPU" if runtime.use_cuda() else "process")
        guard = LossGuard(config.guard, state.recent_losses)
        self._say(f"training {plan.steps} steps of {plan.global_batch_size} rows (<= {plan.seq_length:,} tokens), "
                  f"from step {state.iteration}; run directory {self.run_dir}")
        batches = iter(loader)
        try:
            for step in range(state.iteration + 1, plan.steps + 1):
                start = time.perf_counter()
                for chunk in parts.chunks:
                    chunk.zero_grad_buffer()
                optimizer.zero_grad()
                result, _ = run_schedule(parts.chunks, batches, num_micro, share, stream_length(config, plan),
                                         forward_only=False, arch=self.checked.start.arch)
                verdict = guard.judge(result.loss)
                note = None
                if verdict is not None:
                    action, what = verdict
                    note = f"step {step}: {what}; samples: {self._samples(loader, state)}"
                    if action == "stop":
                        raise TrainingStopped(f"{note} (guard: stop; set guard.on_nan/on_spike=skip to skip such steps)")
                    warn(note + (" (update skipped)" if action == "skip" else ""))
                grad_norm, lr = None, optimizer.param_groups[0]["lr"]
                if verdict is None or verdict[0] == "warn":
                    updated, grad_norm, _ = optimizer.step()
                    if updated:
                        scheduler.step(increment=1)
                    if verdict is None:
                        guard.accept(result.loss)
                state.iteration, state.consumed_samples = step, state.consumed_samples + plan.global_batch_size
                state.recent_losses = guard.recent
                step_time = time.perf_counter() - start
                metrics.step({
                    "step": step, "loss": result.loss, "lr": lr,
                    "grad_norm": grad_norm, "tokens": result.real_tokens, "answer_tokens": result.answer_tokens,
                    "computed_tokens": result.computed_tokens, "padding_ratio": result.computed_tokens / max(1, result.real_tokens),
                    "step_time": step_time, "tokens_per_s": result.real_tokens / step_time,
                    "data_wait": result.data_wait, "model_flops": result.model_flops,
                    "consumed_samples": state.consumed_samples,
                    **({"max_memory_gib": torch.cuda.max_memory_allocated() / 2**30} if runtime.use_cuda() else {}),
                    **({"note": "skipped" if verdict[0] == "skip" else "warned"} if verdict else {})})
                if config.logging.eval_interval and step % config.logging.eval_interval == 0:
                    metrics.valid(step, self._validate(parts, share, plan))
                preempted = signals.agreed()
                if preempted or step == plan.steps or (config.checkpoint.save_interval
                                                       and step % config.checkpoint.save_interval == 0):
                    checkpointer.save(state)
                checkpointer.finalize()
                if preempted:
                    checkpointer.finalize(blocking=True)
                    torch.distributed.barrier()  # leave together: a launcher may end the others at the first exit
                    self._say(f"{signals.received or 'a signal'}: saved step {step}; exiting with {REQUEUE_EXIT} "
                              "to be requeued (rerun the same command to resume)")
                    return REQUEUE_EXIT
        finally:
            stop_workers(batches)  # they ignore the exit signals: only this stops them
            metrics.close()
        return 0

    def _validate(self, parts: ModelParts, share, plan: DataPlan) -> dict:
        """Loss (mean over answer tokens) and token accuracy (argmax == answer) of ``eval_batches`` validation
        micro-batches per data-parallel rank: the teacher-forced scoring of ``longvlm eval --backend megatron``."""
        config = self.config
        for chunk in parts.chunks:
            chunk.eval()
        try:
            with torch.no_grad():
                result, _ = run_schedule(parts.chunks, iter(valid_loader(config, plan)), config.logging.eval_batches, share,
                                         stream_length(config, plan), forward_only=True, score=True)
        finally:
            for chunk in parts.chunks:
                chunk.train()
        return {"loss": result.loss, "token_accuracy": result.accuracy, "answer_tokens": result.answer_tokens}

    def _samples(self, loader, state: TrainState) -> str:
        """The task instances of the current global batch, as ``tasks-file:line`` (known to every rank)."""
        items = loader.dataset
        start = state.consumed_samples
        out = []
        for position in range(start, start + self.checked.plan.global_batch_size):
            d, pack = items.stream(position)
            dataset = items.datasets[d]
            files = dataset.meta["config"]["tasks"]
            for record in dataset.read_pack(pack)["samples"]:
                out.append(f"{Path(files[int(record[1])]).name}:{int(record[2])}")
        return ", ".join(out[:20]) + (f" ... ({len(out)} samples)" if len(out) > 20 else "")


def train(config: TrainConfig, run_dir: str | Path) -> int:
    """``longvlm train``: run (or resume) ``config`` in ``run_dir`` on this process's rank."""
    trainer = Trainer(config, run_dir)
    try:
        return trainer.run()
    finally:
        runtime.destroy()
