"""hide_llava: hierarchical decoupling (Guo et al., ACL 2025).

CKA analysis shows only the top language-model layer is task-specific. So each task trains its
own LoRA slot in every target linear (with the projector), and at inference the layers are
treated apart:

- the top decoder layer (the model's last, whatever its depth) is a mixture of the task slots,
  weighted per sample by ``softmax_t(s_t / τ)`` with
  ``s_t = (cos(img, image_anchor_t) + cos(txt, text_anchor_t)) / 2`` (τ = 0.1); a sample
  without an image uses the text term alone;
- every lower layer fuses the learned slots into one task-general update. The release fuses in
  weight space, ``(Σ_i B_i)(Σ_i A_i) x`` with the cross terms (``lower_fusion = "weight_space"``,
  the default); ``"sum"`` adds the slots' own updates ``Σ_i B_i A_i x``.

Anchors are the running means of the CLIP image embedding and of the instruction's CLIP text
embedding over each task's training records (``prism.methods.task_routed``). The release takes
the similarity's max over the evaluation batch with batch size 1, i.e. per sample, as here.
LAMDA-CL PRISM's port routes with a hard argmax (``top_routing = "argmax"``). A is drawn from
N(0, 0.01) as in the release (the paper does not say); on a small model this matters, since
kaiming-uniform A's are larger there and the fusion's cross terms grow with them.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from prism.methods.task_routed import TaskRoutedMethod, TaskRoutedParams, softmax_weights


class HiDeLLaVAParams(TaskRoutedParams):
    """Original (UCIT, LLaVA-1.5-7B): r 48 split over E = 6 tasks, α 96, lr 2e-4, projector lr 2e-5,
    1 epoch, batch 24 × 4 GPUs, all linear layers of the language model. MCITlib runs UCIT with r 96.
    PRISM: hard argmax at the top layer."""

    target_modules: str = Field("attn_and_ffn", description="preset or regex (original: every linear layer "
                                "of the language model, q k v o gate up down)")
    init_a: Literal["kaiming", "gaussian"] | float = Field(
        0.01, description="how each slot's A is drawn: a std (release: N(0, 0.01); it keeps the lower layers' "
        "fusion cross terms (B_i A_j) small), 'kaiming' (LoRA's default) or 'gaussian' (N(0, 1/r))")
    temperature: float = Field(0.1, gt=0, description="τ of the top layer's softmax over anchor similarities "
                               "(original: 0.1)")
    top_routing: Literal["softmax", "argmax"] = Field(
        "softmax", description="'softmax' (paper and release): slots weighted by softmax(s/τ); 'argmax' "
        "(LAMDA-CL PRISM): the best-matching task's slot alone")
    lower_fusion: Literal["weight_space", "sum"] = Field(
        "weight_space", description="lower layers: 'weight_space' (release) (ΣB)(ΣA) x, cross terms "
        "included; 'sum' Σ B_i A_i x")


class HiDeLLaVA(TaskRoutedMethod):
    id = "hide_llava"
    summary = "a LoRA slot per task; the top layer mixes slots by CLIP anchor similarity, lower layers fuse them"
    Params = HiDeLLaVAParams

    def top_layers(self) -> list[str]:
        from prism.adapters.slot_ops import depth_layers

        assert self.adapters is not None
        return depth_layers(self.adapters, -1)

    def routed_layers(self) -> Any:
        return self.top_layers()

    def mix_slots(self, slots: list[str]) -> None:
        from prism.adapters.slot_ops import other_layers, weight_space_fusion

        assert self.adapters is not None
        top = self.top_layers()
        lower = other_layers(self.adapters, top)
        self.adapters.activate(slots, layers=top)  # per-sample weights arrive with each batch
        self.adapters.activate(slots, layers=lower)
        if self.params.lower_fusion == "weight_space":
            self.adapters.set_delta_fn(weight_space_fusion(slots), layers=lower)

    def routing_weights(self, batch: Any) -> torch.Tensor:
        sims = self.similarities(batch)
        scores = torch.stack([sims["image"], sims["text"]]).nanmean(0)  # (img + txt) / 2; text alone without image
        return softmax_weights(scores, self.params.temperature, hard=self.params.top_routing == "argmax")
