"""The shims that let Megatron-Core's non-Transformer-Engine paths run on a CPU-only torch (gloo).

Applied by the runtime (:func:`megatron_vlm.runtime.placement.settle_placement`) when this process computes
on the CPU: no CUDA, too few GPUs for the processes on the node, or ``LONGVLM_DEVICE=cpu``. On a
process that computes on its GPU nothing is patched, and :func:`remove_cpu_shims` puts back every
original (a test session that runs CPU-pinned tests and GPU tests in one process).

1. A CPU RNG-state tracker. ``model_parallel_cuda_manual_seed`` and the tracker read and write the
   CUDA generator; without it attention dropout and ``get_cuda_rng_tracker().fork()`` fail
   ("cuda rng state model-parallel-rng is not added"). On CPU the tracked states are states of the
   CPU generator, and the module functions ``_get_cuda_rng_state`` / ``_set_cuda_rng_state``
   (used by activation recomputation) read and write the CPU generator too.
2. A stand-in ``torch`` in the megatron-core modules listed in ``_CUDA_ASSUMING_MODULES`` (and only
   there): ``torch.cuda.current_device()`` is the CPU device, ``torch.cuda.synchronize()`` and
   ``empty_cache()`` do nothing, and tensor factories called with ``device="cuda"`` allocate on the
   CPU. Everything else is the real ``torch``. Each listed module says why it needs this.
3. Functions that call ``Tensor.cuda()`` or check for CUDA tensor types get a CPU twin:
   ``clip_grad_by_total_norm_fp32`` (asserts ``torch.cuda.FloatTensor`` gradients),
   ``tensor_parallel.broadcast_data`` (moves the batch with ``.cuda()``), and the ``broadcast`` /
   ``gather_rounds`` tensor exchanges of the fully-parallel checkpoint loader (``.cuda()`` and
   ``init_data("cuda")``), which on CPU are served by its ``gather_object`` exchange.
   ``LanguageModule.setup_embeddings_and_output_layer`` (tied embeddings with pipeline parallelism
   move the shared weight with ``.cuda()``) runs with ``Tensor.cuda`` returning the tensor itself.
4. The element-wise functions Megatron-Core fuses with ``torch.compile`` (``jit_fuser``: the SwiGLU of
   ``fused_bias_swiglu``) run eagerly: compiling them costs ~15 s per process and shape on a CPU, for no
   memory difference (the autograd functions around them keep the same tensors either way).

Everything else runs on CPU as on GPU: tensor, pipeline, data and context parallelism (with the
``torch`` attention backend), sequence parallelism, packed rows (``AttentionSegments``),
activation recomputation and ``dist_checkpointing``. What needs CUDA: Transformer Engine (the
``te`` backend, fp8), the distributed optimizer and the bf16/fp16 mixed-precision optimizers
(they check for CUDA tensor types). See docs/runtime.md.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import types

import torch

_CPU = torch.device("cpu")


def _is_cuda(dev) -> bool:
    if isinstance(dev, str):
        return dev.startswith("cuda")
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    return isinstance(dev, int)  # a bare index means a CUDA device


def _on_cpu(factory):
    def wrapped(*args, **kwargs):
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = _CPU
        return factory(*args, **kwargs)

    wrapped.__name__ = wrapped.__qualname__ = factory.__name__
    return wrapped


class _CpuCuda(types.ModuleType):
    """``torch.cuda`` as the shimmed modules see it: the current device is the CPU."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device() -> torch.device:
        return _CPU

    @staticmethod
    def synchronize(*_args, **_kwargs) -> None:
        return None

    @staticmethod
    def empty_cache() -> None:
        return None


class _CpuTorch(types.ModuleType):
    """``torch`` as the shimmed modules see it: ``torch.cuda`` is :class:`_CpuCuda`, factories
    asked for ``device="cuda"`` allocate on the CPU; every other attribute is the real one."""

    _FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange",
                  "zeros_like", "ones_like", "empty_like", "full_like", "rand", "randn")

    def __init__(self):
        super().__init__("torch")
        self.cuda = _CpuCuda("torch.cuda")
        for name in self._FACTORIES:
            setattr(self, name, _on_cpu(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)


_JIT_FUSED_MODULES = ("megatron.core.fusions.fused_bias_swiglu",)

# module -> why it needs the stand-in torch (kept in sync with docs/runtime.md)
_CUDA_ASSUMING_MODULES = {
    "megatron.core.tensor_parallel.layers": "weights and gather buffers on current_device()",
    "megatron.core.tensor_parallel.mappings": "all-gather / reduce-scatter outputs on current_device()",
    "megatron.core.tensor_parallel.utils": "gathered split buffers on current_device()",
    "megatron.core.models.common.embeddings.rotary_pos_embedding":
        "inv_freq (mRoPE) built on / moved to current_device()",
    "megatron.core.transformer.utils": "the default causal mask is built with device='cuda'",
    "megatron.core.transformer.attention": "inference KV cache on current_device()",
    "megatron.core.transformer.dot_product_attention": "softmax offset on current_device()",
    "megatron.core.pipeline_parallel.p2p_communication":
        "receive buffers on current_device(); torch.cuda.synchronize() after batched p2p",
    "megatron.core.pipeline_parallel.schedules": "token counter created with device='cuda'",
    "megatron.core.distributed.param_and_grad_buffer": "param/grad buffers on current_device()",
    "megatron.core.distributed.distributed_data_parallel": "torch.cuda.synchronize/empty_cache",
    "megatron.core.optimizer.optimizer": "found-inf / scale tensors created with device='cuda'",
    "megatron.core.optimizer.clip_grads": "grad-norm tensors created with device='cuda'",
    "megatron.core.optimizer.grad_scaler": "loss-scale tensors created with device='cuda'",
    "megatron.core.utils": "the local multi-tensor l2 norm returns a device='cuda' tensor",
    "megatron.core.timers": "torch.cuda.synchronize() and gathers on current_device()",
    "megatron.core.rerun_state_machine": "validation tensors created with device='cuda'",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver":
        "save-plan agreement tensors created with device='cuda'",
    "megatron.core.dist_checkpointing.strategies.filesystem_async": "torch.cuda.synchronize()",
    "megatron.core.dist_checkpointing.strategies.async_utils":
        "torch.cuda.synchronize() and liveness tensors on current_device()",
    "megatron.core.dist_checkpointing.strategies.fully_parallel": "torch.cuda.synchronize()",
    "megatron.core.tensor_parallel.data": "broadcast size tensor created with device='cuda'",
}

_PATCHES: list[tuple[object, str, object]] = []  # (owner, attribute, original), in the order applied


def _patch(owner, attribute: str, value) -> None:
    _PATCHES.append((owner, attribute, getattr(owner, attribute)))
    setattr(owner, attribute, value)


class CpuRNGStatesTracker:
    """Megatron's ``CudaRNGStatesTracker`` with the states held by the CPU generator.

    Same names, same seeds, same nesting rules; ``fork(name)`` swaps the CPU generator's state in
    and out (megatron's version would also warn that the CPU state changed inside the fork).
    """

    def __init__(self):
        self.reset()
        self.use_cudagraphable_rng = False
        self.is_inference_rng_tracker = False

    def is_initialized(self):
        return self._is_initialized

    def reset(self):
        self._is_initialized = False
        self.states_ = {}
        self.seeds_ = set()
        self._current_state_name = "default-rng"

    def get_states(self):
        return dict(self.states_)

    def set_states(self, states):
        self._is_initialized = True
        self.states_ = states

    def add(self, name, seed):
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        self.seeds_.add(seed)
        if name in self.states_:
            raise Exception(f"cuda rng state {name} already exists")
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise Exception(f"cuda rng state {name} is not added")
        orig_state, orig_name = torch.get_rng_state(), self._current_state_name
        if orig_name != "default-rng":
            self.states_[orig_name] = orig_state
        torch.set_rng_state(self.states_[name])
        self._current_state_name = name
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            if orig_name != "default-rng":
                orig_state = self.states_[orig_name]
            torch.set_rng_state(orig_state)
            self._current_state_name = orig_name


def _cpu_get_rng_state(device="cuda", clone=False, graph_safe=False):
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


def model_parallel_cpu_manual_seed(seed, te_rng_tracker=False, inference_rng_tracker=False,
                                   use_cudagraphable_rng=False, tp_rank=None, ep_rank=None,
                                   etp_rank=None, force_reset_rng=False):
    """``model_parallel_cuda_manual_seed`` on the CPU generator: same seeds, same state names."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import random as tp_random

    tp_rank = ps.get_tensor_model_parallel_rank() if tp_rank is None else tp_rank
    ep_rank = ps.get_expert_model_parallel_rank() if ep_rank is None else ep_rank
    etp_rank = ps.get_expert_tensor_parallel_rank() if etp_rank is None else etp_rank
    tracker = CpuRNGStatesTracker()
    tp_random._CUDA_RNG_STATE_TRACKER = tracker
    tp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    torch.manual_seed(seed)
    tracker.add(tp_random.get_data_parallel_rng_tracker_name(), seed)
    tracker.add(tp_random._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + tp_rank)
    tracker.add(tp_random.get_expert_parallel_rng_tracker_name(), seed + 1024 + 100 * ep_rank + etp_rank)


def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """megatron-core's ``clip_grad_by_total_norm_fp32`` without its ``torch.cuda.FloatTensor`` check."""
    from megatron.core.utils import to_local_if_dtensor

    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [to_local_if_dtensor(getattr(p, attr)).detach() for p in parameters
             if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


def _broadcast_data(keys, data, datatype, tp_group=None):
    """megatron-core's ``broadcast_data`` without moving the batch to CUDA."""
    from megatron.core.tensor_parallel import data as tp_data
    from megatron.core.utils import get_tensor_model_parallel_group_if_none

    tp_group = get_tensor_model_parallel_group_if_none(tp_group)
    key_size, key_numel, total_numel = tp_data._build_key_size_numel_dictionaries(keys, data, tp_group)
    if tp_group.rank() == 0:
        tp_data._check_data_types(keys, data, datatype)
        flat = torch.cat([data[key].contiguous().view(-1) for key in keys], dim=0)
    else:
        flat = torch.empty(total_numel, dtype=datatype)
    torch.distributed.broadcast(flat, torch.distributed.get_process_group_ranks(tp_group)[0], group=tp_group)
    output, offset = {}, 0
    for key in keys:
        output[key] = flat.narrow(0, offset, key_numel[key]).view(key_size[key])
        offset += key_numel[key]
    return output


def _without_cuda_moves(method):
    """Run ``method`` with ``Tensor.cuda()`` returning the tensor itself (single-threaded set-up code)."""

    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda self, *_args, **_kwargs: self
        try:
            return method(*args, **kwargs)
        finally:
            torch.Tensor.cuda = cuda

    return wrapped


def cpu_shims_applied() -> bool:
    return bool(_PATCHES)


def apply_cpu_shims() -> None:
    """Make megatron-core's non-TE paths run on the CPU (gloo). Idempotent; undone by :func:`remove_cpu_shims`."""
    if _PATCHES:
        return
    cpu_torch = _CpuTorch()
    for name in _CUDA_ASSUMING_MODULES:
        _patch(importlib.import_module(name), "torch", cpu_torch)

    from megatron.core import tensor_parallel
    from megatron.core.dist_checkpointing import exchange_utils
    from megatron.core.models.common.language_module.language_module import LanguageModule
    from megatron.core.optimizer import clip_grads, optimizer
    from megatron.core.tensor_parallel import data as tp_data
    from megatron.core.tensor_parallel import random as tp_random

    _patch(tp_random, "_get_cuda_rng_state", _cpu_get_rng_state)
    _patch(tp_random, "_set_cuda_rng_state", _cpu_set_rng_state)
    _patch(tp_random, "model_parallel_cuda_manual_seed", model_parallel_cpu_manual_seed)
    _patch(tensor_parallel, "model_parallel_cuda_manual_seed", model_parallel_cpu_manual_seed)
    _patch(clip_grads, "clip_grad_by_total_norm_fp32", _clip_grad_by_total_norm_fp32)
    _patch(optimizer, "clip_grad_by_total_norm_fp32", _clip_grad_by_total_norm_fp32)
    _patch(tp_data, "broadcast_data", _broadcast_data)
    _patch(tensor_parallel, "broadcast_data", _broadcast_data)
    _patch(exchange_utils, "exchange_loaded_tensors_broadcast", exchange_utils.exchange_loaded_tensors_gather_object)
    _patch(exchange_utils, "exchange_loaded_tensors_gather_rounds",
           exchange_utils.exchange_loaded_tensors_gather_object)
    _patch(LanguageModule, "setup_embeddings_and_output_layer",
           _without_cuda_moves(LanguageModule.setup_embeddings_and_output_layer))
    for name in _JIT_FUSED_MODULES:
        module = importlib.import_module(name)
        for attribute, value in list(vars(module).items()):
            eager = getattr(value, "_torchdynamo_orig_callable", None)
            if eager is not None:
                _patch(module, attribute, eager)


def remove_cpu_shims() -> None:
    """Put back every original that :func:`apply_cpu_shims` replaced, and drop the CPU RNG tracker."""
    from megatron.core.tensor_parallel import random as tp_random

    while _PATCHES:
        owner, attribute, original = _PATCHES.pop()
        setattr(owner, attribute, original)
    if isinstance(tp_random._CUDA_RNG_STATE_TRACKER, CpuRNGStatesTracker):
        tp_random._CUDA_RNG_STATE_TRACKER = None
        tp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = False
