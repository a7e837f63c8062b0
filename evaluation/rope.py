"""The RoPE base a run evaluates with: the checkpoint's, ``--rope-base``, or NTK for ``--rope-target-length``.

The flags describe a ``megatron_vlm.models.config.RopeSettings`` (the one home of the RoPE rule,
which training uses); it is resolved once per run against the checkpoint's ``config.json``
(its family's arch) into a :class:`RopeSetting`, which every backend applies the same way:

- ``hf``: :meth:`RopeSetting.apply_to_hf_config` sets ``rope_theta`` on the loaded config;
- ``megatron``: :meth:`RopeSetting.megatron_kwargs` for the family's ``config_from_hf``;
- ``openai``: a server cannot be changed from the client; the server must serve the same base
  (:meth:`RopeSetting.server_hint` says how), and the results record that it was the server's job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from evaluation.config import EvalError, ModelOptions, parse_length
from megatron_vlm.errors import LongVLMError


@dataclass(frozen=True)
class RopeSetting:
    mode: str                        # keep | explicit | ntk (RopeSettings.mode)
    base: float | None               # the base used (None: the checkpoint's, unknown without its config)
    checkpoint_base: float | None    # the checkpoint's own rope_theta
    head_dim: int | None
    target_length: int | None = None
    original_length: int | None = None

    @property
    def overridden(self) -> bool:
        return self.mode != "keep"

    def to_json(self) -> dict:
        return asdict(self)

    def apply_to_hf_config(self, config) -> None:
        """Set the base on a transformers VLM config (its text config's ``rope_parameters``)."""
        if not self.overridden:
            return
        text = getattr(config, "text_config", config)
        params = dict(text.rope_parameters or {})
        params["rope_theta"] = self.base
        text.rope_parameters = params

    def megatron_kwargs(self) -> dict:
        """Keywords of a family's ``config_from_hf`` that apply this base."""
        from megatron_vlm.models.config import RopeSettings

        return {"rope": RopeSettings(mode="explicit", base=self.base)} if self.overridden else {}

    def server_hint(self) -> str:
        """How to give a server this base."""
        return (f"serve a checkpoint whose config.json has rope_theta {self.base:g} (export it with "
                f"'longvlm convert megatron-to-hf --rope-theta {self.base:g}', or edit config.json), or pass "
                "the override your server supports (vLLM: --hf-overrides)")


def rope_settings(options: ModelOptions):
    """The ``RopeSettings`` the eval flags describe."""
    from megatron_vlm.models.config import RopeSettings

    if options.rope_base is not None:
        return RopeSettings(mode="explicit", base=float(options.rope_base))
    if options.rope_target_length is not None:
        return RopeSettings(mode="ntk", target_length=parse_length(options.rope_target_length, "rope-target-length"),
                            original_length=parse_length(options.rope_original_length, "rope-original-length"))
    return RopeSettings()


def checkpoint_config(checkpoint: str) -> tuple[dict | str, str]:
    """``config.json`` of an HF directory, or the one a Megatron checkpoint records, and where it is."""
    from megatron_vlm.formats.checkpoint import TRACKER_NAME, MegatronCheckpoint

    if (Path(checkpoint) / TRACKER_NAME).is_file():
        ckpt = MegatronCheckpoint.open(checkpoint)
        return ckpt.meta["hf_config"], str(ckpt.iter_dir / "longvlm.json")
    return checkpoint, f"--checkpoint {checkpoint}"


def checkpoint_family(options: ModelOptions):
    """The model family of ``--checkpoint`` (its ``config.json``'s ``model_type``); without one, the default
    family (an API server's model)."""
    from megatron_vlm.models.registry import DEFAULT_FAMILY, family_of, get_family

    if not options.checkpoint:
        return get_family(DEFAULT_FAMILY)
    try:
        source, name = checkpoint_config(options.checkpoint)
        return family_of(source, name=name)
    except LongVLMError as err:
        raise EvalError(str(err)) from None


def resolve_rope(options: ModelOptions) -> RopeSetting:
    """The run's RoPE base, against ``--checkpoint``'s ``config.json`` where there is one."""
    from megatron_vlm.models.registry import read_arch

    rope = rope_settings(options)
    if not options.checkpoint:
        if rope.mode == "ntk":
            raise EvalError("--rope-target-length needs the checkpoint's config.json (its rope_theta and head dim): "
                            "pass --checkpoint HF_DIR")
        return RopeSetting(rope.mode, rope.base, None, None)
    try:
        source, name = checkpoint_config(options.checkpoint)
        arch = read_arch(source, name=name)
        base = rope.resolve(arch.rope_theta, arch.head_dim)
    except LongVLMError as err:  # no or a bad config.json, a bad RoPE setting
        raise EvalError(str(err)) from None
    ntk = rope.mode == "ntk"
    return RopeSetting(rope.mode, base, arch.rope_theta, arch.head_dim,
                       rope.target_length if ntk else None, rope.original_length if ntk else None)
