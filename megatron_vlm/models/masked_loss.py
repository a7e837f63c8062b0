"""``MaskedLossGPTModel``: a ``GPTModel`` whose loss runs the output layer only on loss-masked tokens.

Long-context continued pretraining puts the loss on a few answer tokens of a 128K-token row; the
full logits (``s x b x vocab/TP``, 152K vocabulary) would dwarf the activations. Given ``labels``
and ``loss_mask`` (both ``[b, s_local]``), the hidden states of the masked tokens are selected
(after the sequence-parallel all-gather, since the TP ranks hold different tokens) and only those
rows go through the vocab-parallel output layer and cross entropy. With ``score_answers`` set (an
evaluation), the result is ``[b, s, 2]``: the per-token loss and whether the token is the argmax
of the logits (1.0/0.0; ties to the lowest id, across TP ranks). Everything else is megatron-core's
``GPTModel``.
"""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region


class MaskedLossGPTModel(GPTModel):
    """``GPTModel``; with ``labels`` and ``loss_mask`` the per-token loss is computed on the masked tokens only."""

    score_answers = False  # set by VisionLanguageModel.forward(score=True)

    def _postprocess(self, hidden_states, labels=None, loss_mask=None, **kwargs):
        if not self.post_process or labels is None or loss_mask is None:
            return super()._postprocess(hidden_states=hidden_states, labels=labels, loss_mask=loss_mask, **kwargs)
        if self.mtp_process:
            raise NotImplementedError("loss_mask with multi-token prediction")
        return self.masked_token_loss(hidden_states, labels, loss_mask)

    def masked_token_loss(self, hidden_states: torch.Tensor, labels: torch.Tensor,
                          loss_mask: torch.Tensor) -> torch.Tensor:
        """Per-token loss ``[b, s]`` at the tokens where ``loss_mask`` is nonzero, exactly 0 elsewhere.

        ``hidden_states`` ``[s, b, h]`` (``[s/TP, b, h]`` with sequence parallelism).
        """
        if self.output_layer.sequence_parallel:
            # plain split backward: the output layer all-reduces its input gradient over TP itself
            hidden_states = gather_from_sequence_parallel_region(
                hidden_states, tensor_parallel_output_grad=False, group=self.pg_collection.tp)
        s_idx, b_idx = (loss_mask != 0).t().nonzero(as_tuple=True)
        logits = self.output_logits(hidden_states[s_idx, b_idx].unsqueeze(1))  # [n, 1, vocab/TP]
        targets = labels[b_idx, s_idx]
        loss = self.compute_language_model_loss(targets.unsqueeze(0), logits)  # [1, n]
        if self.score_answers:
            correct = (self._vocab_parallel_argmax(logits[:, 0]) == targets).to(loss.dtype)
            out = loss.new_zeros((*labels.shape, 2))
            return out.index_put((b_idx, s_idx), torch.stack([loss[0], correct], dim=-1))
        return loss.new_zeros(labels.shape).index_put((b_idx, s_idx), loss[0])

    def _vocab_parallel_argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Global vocabulary index of the largest logit of each row of this rank's ``[n, vocab/TP]`` slice."""
        group = self.pg_collection.tp
        best, index = logits.float().max(dim=-1)
        if group.size() == 1:
            return index
        index = index + group.rank() * logits.shape[-1]
        gathered = [torch.empty_like(t) for t in (best, index) for _ in range(group.size())]
        torch.distributed.all_gather(gathered[:group.size()], best.contiguous(), group=group)
        torch.distributed.all_gather(gathered[group.size():], index.contiguous(), group=group)
        bests, indices = torch.stack(gathered[:group.size()]), torch.stack(gathered[group.size():])
        return indices.gather(0, bests.argmax(dim=0, keepdim=True))[0]  # first rank wins a tie: lowest id

    def output_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Vocab-parallel logits of hidden states that are not sequence-split (``[n, b, h]``)."""
        weight = self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights else None
        sequence_parallel = self.output_layer.sequence_parallel
        # input already gathered: turned off for this call, as GPTModel's own last-token inference path does
        self.output_layer.sequence_parallel = False
        try:
            logits, _ = self.output_layer(hidden_states, weight=weight, runtime_gather_output=False)
        finally:
            self.output_layer.sequence_parallel = sequence_parallel
        return logits
