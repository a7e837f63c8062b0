"""``VisionLanguageModel``: a native Megatron-Core VLM (vision tower + mRoPE ``GPTModel``), every family's base.

A family's model (``<family>/model.py``) subclasses it with its vision tower, language layer spec
and rotary embedding. Inputs are full-length rows, or one packed stream (``[1, T]`` with ``cu_seqlens`` /
``cu_seqlens_padded``: THD). With context parallelism the input is one stream and the model takes
this rank's part of it itself, 2 of the 2*CP chunks of every packed sample
(:class:`megatron_vlm.models.context_parallel.CPSplit`, Transformer Engine's THD layout); vision work
is split across CP ranks by image, the image embeddings all-gathered. It returns the local part of the
logits / per-token loss, in the split's order. With a ``loss_mask`` the output layer runs only on the
masked tokens (:mod:`megatron_vlm.models.masked_loss`).

DeepStack (``config.deepstack_layers`` > 0, Qwen3-VL): the vision tower returns, per LLM token, the
merged embedding followed by one feature per DeepStack layer; they travel with the hidden states as
extra columns of one *stream* ``[s, b, h * (1 + slots)]`` (:mod:`megatron_vlm.models.deepstack`), so
context and sequence parallelism cut them like the tokens and pipeline stages pass them on to the
stage holding their layer.
"""

from __future__ import annotations

import numpy as np
import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import get_num_layers_to_build

from megatron_vlm.models.attention import AttentionSegments
from megatron_vlm.models.config import VLModelConfig
from megatron_vlm.models.context_parallel import CPSplit, all_gather_varlen, cp_split, split_images_by_cost
from megatron_vlm.models.deepstack import split_stream, stage_slots, stream_out
from megatron_vlm.models.masked_loss import MaskedLossGPTModel
from megatron_vlm.models.positions import mrope_position_ids, packed_mrope_position_ids


class VisionLanguageModel(MegatronModule):
    """Children ``vision_model`` (first pipeline stage only) and ``language_model`` (a ``MaskedLossGPTModel``).

    ``vp_stage``: the virtual pipeline stage this chunk is (interleaved schedule), as in ``GPTModel``.
    Subclasses give :meth:`build_vision_model` and may change :meth:`language_block_spec` and
    :meth:`rotary_embedding`.
    """

    def __init__(self, config: VLModelConfig, *, pre_process: bool = True, post_process: bool = True,
                 vp_stage: int | None = None):
        super().__init__(config=config.language)
        self.model_config = config
        self.model_type = ModelType.encoder_or_decoder  # read by Megatron-Core's pipeline schedules
        self.pre_process, self.post_process = pre_process, post_process
        self.share_embeddings_and_output_weights = config.tie_word_embeddings
        self.vision_model = self.build_vision_model(config) if pre_process else None
        self.language_model = MaskedLossGPTModel(
            config=config.language,
            transformer_layer_spec=self.language_block_spec(
                config, get_num_layers_to_build(config.language, vp_stage=vp_stage)),
            vocab_size=config.vocab_size,
            max_sequence_length=config.max_sequence_length,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=config.tie_word_embeddings,
            position_embedding_type="mrope",
            rotary_base=config.rotary_base,
            scatter_embedding_sequence_parallel=False,
            vp_stage=vp_stage,
        )
        self.vp_stage = vp_stage
        rotary = self.rotary_embedding(config)
        if rotary is not None:
            self.language_model.rotary_pos_emb = rotary
        # Position ids reach the rotary embedding already cut to this CP rank's tokens.
        self.language_model.rotary_pos_emb.cp_group = None
        layers = self.language_model.decoder.layers
        first = layers[0].layer_number - 1 if len(layers) else config.language.num_layers
        self.slots_in, self.slots_out = stage_slots(config.deepstack_layers, first, len(layers))
        self._received = None

    # -- family parts -----------------------------------------------------------------------------

    def build_vision_model(self, config: VLModelConfig) -> MegatronModule:
        """The vision tower: ``(pixel_values, grid_thw)`` -> ``[tokens, out_hidden * (1 + deepstack_layers)]``."""
        raise NotImplementedError

    def language_block_spec(self, config: VLModelConfig, num_layers: int):
        """The spec of this stage's ``num_layers`` language layers."""
        return config.block_spec(num_layers, causal=True)

    def rotary_embedding(self, config: VLModelConfig):
        """A replacement for ``GPTModel``'s mRoPE module (``None``: keep it)."""
        return None

    # -- pipeline ---------------------------------------------------------------------------------

    def set_input_tensor(self, input_tensor) -> None:
        """Pipeline stages after the first get their input from the previous stage (the hidden states, and
        the DeepStack features of this and later stages' layers as extra columns)."""
        tensor = input_tensor[0] if isinstance(input_tensor, list) else input_tensor
        self._received = tensor if self.slots_in else None
        if tensor is not None and self.slots_in:
            tensor = split_stream(tensor, self.slots_in)[0]
        self.language_model.set_input_tensor(tensor)

    def shared_embedding_or_output_weight(self):
        return self.language_model.shared_embedding_or_output_weight()

    # -- inputs -----------------------------------------------------------------------------------

    def _cp(self) -> tuple[int, int]:
        size = self.model_config.language.context_parallel_size
        return size, (parallel_state.get_context_parallel_rank() if size > 1 else 0)

    def position_ids(self, input_ids: torch.Tensor, image_grid_thw=None, cu_seqlens=None) -> torch.Tensor:
        """mRoPE position ids ``[3, b, s]`` (``get_rope_index`` rules; restarting per packed sample)."""
        cfg = self.model_config
        ids = input_ids.detach().cpu().numpy()
        grids = np.zeros((0, 3), np.int64) if image_grid_thw is None else \
            torch.as_tensor(image_grid_thw).cpu().numpy().reshape(-1, 3).astype(np.int64)
        tokens = grids.prod(1) // cfg.vision.spatial_merge_size ** 2
        ends = np.cumsum(tokens)
        kw = dict(image_token_id=cfg.image_token_id, spatial_merge_size=cfg.vision.spatial_merge_size)
        rows, first, used = [], 0, 0
        s = ids.shape[1]
        cu = None if cu_seqlens is None else torch.as_tensor(cu_seqlens).cpu().numpy()
        for r, row in enumerate(ids):
            used += int((row == cfg.image_token_id).sum())
            last = int(np.searchsorted(ends, used, side="right"))  # images whose tokens are in rows <= r
            row_grids = grids[first:last]
            first = last
            if cu is None:
                rows.append(mrope_position_ids(row, row_grids, **kw))
            else:
                row_cu = cu[(cu >= r * s) & (cu <= (r + 1) * s)] - r * s
                rows.append(packed_mrope_position_ids(row, row_grids, row_cu, **kw))
        return torch.from_numpy(np.stack(rows, axis=1)).to(input_ids.device)

    def image_embeddings(self, pixel_values: torch.Tensor, image_grid_thw) -> torch.Tensor:
        """LLM embeddings of all images, in order; with CP each rank encodes a share and they are all-gathered.

        With CP, ``pixel_values`` holds either every image's patches or only this CP rank's images'
        (the range ``split_images_by_cost`` gives it; what the training loader hands each rank).
        """
        grids = torch.as_tensor(image_grid_thw).reshape(-1, 3).cpu()
        cp_size, cp_rank = self._cp()
        if cp_size == 1:
            return self.vision_model(pixel_values, grids)
        patches = grids.prod(1).tolist()
        unit = self.model_config.vision.spatial_merge_size ** 2
        bounds = split_images_by_cost(patches, cp_size)
        first, last = bounds[cp_rank]
        p0, p1 = sum(patches[:first]), sum(patches[:last])
        if pixel_values.shape[0] == sum(patches):
            pixel_values = pixel_values[p0:p1]
        elif pixel_values.shape[0] != p1 - p0:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} patches: neither all images' "
                             f"{sum(patches)} nor this CP rank's {p1 - p0}")
        sizes = [sum(patches[a:b]) // unit for a, b in bounds]
        if last > first:
            local = self.vision_model(pixel_values, grids[first:last])
        else:  # fewer images than CP ranks: this rank joins the gather (and its backward) with none
            width = self.model_config.vision.out_hidden_size * (1 + self.model_config.deepstack_layers)
            local = self._touch_vision(pixel_values.new_zeros((0, width), dtype=self.model_config.vision.params_dtype))
        return all_gather_varlen(local, sizes, parallel_state.get_context_parallel_group())

    def _touch_vision(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus zero times one element of every trainable vision parameter, when the tower does not
        run (a text-only micro-batch, a CP rank without images): each parameter still gets a (zero)
        gradient, so Megatron DDP's gradient buckets see every parameter in every step."""
        if self.vision_model is None or not torch.is_grad_enabled():
            return x
        params = [p for p in self.vision_model.parameters() if p.requires_grad]
        if not params:
            return x
        return x + (torch.stack([p.reshape(-1)[0] for p in params]).sum() * 0.0).to(x.dtype)

    def embed(self, input_ids: torch.Tensor, pixel_values=None, image_grid_thw=None,
              split: CPSplit | None = None) -> torch.Tensor:
        """Decoder input ``[s_local, b, h]``: word embeddings with image embeddings at ``<|image_pad|>``
        (``[s_local, b, h * (1 + deepstack_layers)]`` with DeepStack: the features at the image tokens, 0 elsewhere)."""
        local = (lambda x: x) if split is None else (lambda x: split.select(x, 1))
        emb = self.language_model.embedding(input_ids=local(input_ids), position_ids=None)
        if self.slots_in:
            emb = torch.cat([emb, emb.new_zeros((*emb.shape[:2], emb.shape[2] * self.slots_in))], dim=-1)
        mask = input_ids == self.model_config.image_token_id
        n_tokens = int(mask.sum())
        if n_tokens or pixel_values is not None:
            if pixel_values is None or image_grid_thw is None:
                raise ValueError(f"input has {n_tokens} <|image_pad|> tokens but no pixel_values / image_grid_thw")
            images = self.image_embeddings(pixel_values, image_grid_thw).to(emb.dtype)
            if images.shape[0] != n_tokens:
                raise ValueError(f"image tokens and image embeddings differ: {n_tokens} <|image_pad|> tokens, "
                                 f"{images.shape[0]} embeddings from image_grid_thw")
            rows = (mask.flatten().cumsum(0) - 1).view(mask.shape)
            mask_l, rows_l = local(mask), local(rows)
            where = mask_l.t().nonzero(as_tuple=True)  # emb is [s, b, h]
            emb = emb.index_put(where, images[rows_l.t()[where]])
        else:
            emb = self._touch_vision(emb)
        if self.model_config.language.sequence_parallel:
            emb = tensor_parallel.scatter_to_sequence_parallel_region(emb)
        return emb

    # -- forward ----------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, image_grid_thw=None, cu_seqlens=None,
                cu_seqlens_padded=None, labels: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None,
                runtime_gather_output: bool | None = None, score: bool = False) -> torch.Tensor:
        """Logits ``[b, s_local, vocab / tp]``, or the per-token loss ``[b, s_local]`` when ``labels`` are given.

        ``input_ids`` ``[b, s]`` (``[1, T]``, one packed stream, under context parallelism); ``position_ids``
        ``[3, b, s]`` (computed when omitted); ``pixel_values`` / ``image_grid_thw`` for all images of the
        batch in token order; ``cu_seqlens_padded``: where each packed sample starts in the row-major
        flattened ``b * s`` tokens (and ends: ``[0, ..., b * s]``), ``cu_seqlens`` the cumulative real sample
        lengths when samples carry padding at their ends (Megatron's THD pair; only ``cu_seqlens``: samples
        without padding, its boundaries); ``labels`` and ``loss_mask`` ``[b, s]`` full-length: with
        ``loss_mask`` the loss (and the output layer) is computed only where it is nonzero and is exactly 0
        elsewhere; ``score`` (with both) returns ``[b, s_local, 2]``: that loss and whether each token is
        the argmax (evaluation).
        """
        cp_size, cp_rank = self._cp()
        if cu_seqlens_padded is None:
            cu_seqlens_padded, cu_seqlens = cu_seqlens, None
        if cp_size > 1 and input_ids.shape[0] != 1:
            raise ValueError(f"with context parallelism the micro-batch is one packed stream [1, T] (got {input_ids.shape[0]} "
                             "rows): concatenate the rows' samples (megatron_vlm.data.collate_packs does)")
        if position_ids is None:
            position_ids = self.position_ids(input_ids, image_grid_thw, cu_seqlens_padded)
        split = cp_split(cu_seqlens_padded, input_ids.shape[1], cp_size, cp_rank)
        segments = None
        if cu_seqlens_padded is not None or split is not None:
            padded = torch.as_tensor(cu_seqlens_padded if cu_seqlens_padded is not None else split.cu_seqlens).cpu()
            real = None if cu_seqlens is None else torch.diff(torch.as_tensor(cu_seqlens).cpu())
            segments = AttentionSegments(cu_seqlens=padded, seqlens=real, cp=split)  # host-side plans, no syncs
        tp = self.model_config.layout.tp
        if split is not None and self.model_config.language.sequence_parallel and split.local_length % tp:
            raise ValueError(f"sequence parallelism needs each CP rank's {split.local_length} tokens divisible by "
                             f"tp={tp}: pad the stream (ParallelLayout.token_padding)")
        local = (lambda x, dim: x) if split is None else split.select
        decoder_input = self.embed(input_ids, pixel_values, image_grid_thw, split) if self.pre_process else None
        deepstack = None
        if self.slots_in:
            stream = decoder_input if self.pre_process else self._received
            decoder_input, deepstack = split_stream(stream, self.slots_in)
            if not self.pre_process:
                decoder_input = None  # the decoder reads its input tensor
        self.language_model.score_answers = score
        output = self.language_model(
            input_ids=local(input_ids, 1),
            position_ids=local(position_ids, 2),
            attention_mask=None,
            packed_seq_params=segments,
            decoder_input=decoder_input,
            labels=None if labels is None else local(labels, 1),
            loss_mask=None if loss_mask is None else local(loss_mask, 1),
            runtime_gather_output=runtime_gather_output,
            extra_block_kwargs=None if deepstack is None else {"context": deepstack},
        )
        return stream_out(output, deepstack, self.slots_in, self.slots_out) if not self.post_process else output
