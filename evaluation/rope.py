"""The RoPE base a run evaluates with: the checkpoint's, ``--rope-base``, or NTK for ``--rope-ntk-length``.

Resolved once per run by :func:`resolve_rope` (with ``megatron_vlm.models.config.resolve_rope_base``,
the function training uses) and applied by every backend from the same :class:`RopeSetting`:

- ``hf``: :meth:`RopeSetting.apply_to_hf_config` sets ``rope_theta`` on the loaded config;
- ``megatron``: :meth:`RopeSetting.megatron_kwargs` for ``qwen25vl_config_from_hf``;
- ``openai``: a server cannot be changed from the client; the server must be started with the same
  base (:meth:`RopeSetting.server_hint` says how), and the results record that it was the server's job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from evaluation.config import EvalError, ModelOptions, parse_length


@dataclass(frozen=True)
class RopeSetting:
    mode: str                        # keep | explicit | ntk (megatron_vlm.models.config.ROPE_BASE_MODES)
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
        """Set the base on a transformers Qwen2.5-VL config (its text config's ``rope_parameters``)."""
        if not self.overridden:
            return
        text = getattr(config, "text_config", config)
        params = dict(text.rope_parameters or {})
        params["rope_theta"] = self.base
        text.rope_parameters = params

    def megatron_kwargs(self) -> dict:
        """Keywords of ``megatron_vlm.models.config.qwen25vl_config_from_hf`` that apply this base."""
        return {"rope_base_mode": "explicit", "rope_base": self.base} if self.overridden else {}

    def server_hint(self) -> str:
        """How to give a server this base."""
        return (f"serve a checkpoint whose config.json has rope_theta {self.base:g} (export it with "
                f"'longvlm convert megatron-to-hf --rope-theta {self.base:g}', or edit config.json), or pass "
                "the override your server supports (vLLM: --hf-overrides)")


def _text_config(hf_config: dict) -> dict:
    return hf_config.get("text_config") or hf_config


def checkpoint_rope(hf_config: dict) -> tuple[float, int]:
    """``(rope_theta, head_dim)`` of a Qwen2.5-VL ``config.json`` (hub flat or transformers-5 nested)."""
    text = _text_config(hf_config)
    params = text.get("rope_parameters") or {}
    theta = params.get("rope_theta", text.get("rope_theta", 1_000_000.0))
    try:
        head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // int(text["num_attention_heads"]))
    except (KeyError, TypeError, ValueError):
        raise EvalError("config.json: no head_dim, hidden_size or num_attention_heads in the text config") from None
    return float(theta), head_dim


def resolve_rope(options: ModelOptions, hf_config: dict | None) -> RopeSetting:
    """The run's RoPE base; ``hf_config`` is the checkpoint's ``config.json`` (None: not available)."""
    from megatron_vlm.models.config import resolve_rope_base

    if options.rope_base is None and options.rope_ntk_length is None:
        if hf_config is None:
            return RopeSetting("keep", None, None, None)
        theta, head_dim = checkpoint_rope(hf_config)
        return RopeSetting("keep", theta, theta, head_dim)
    if options.rope_base is not None:
        theta, head_dim = checkpoint_rope(hf_config) if hf_config is not None else (None, None)
        return RopeSetting("explicit", float(options.rope_base), theta, head_dim)
    if hf_config is None:
        raise EvalError("--rope-ntk-length needs the checkpoint's config.json (its rope_theta and head dim): "
                        "pass --checkpoint HF_DIR")
    theta, head_dim = checkpoint_rope(hf_config)
    target = parse_length(options.rope_ntk_length, "rope-ntk-length")
    original = parse_length(options.rope_original_length, "rope-original-length")
    base = resolve_rope_base(theta, head_dim, "ntk", target_length=target, original_length=original)
    return RopeSetting("ntk", base, theta, head_dim, target, original)
