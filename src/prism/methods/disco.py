"""disco: per-task LoRA subspaces combined by text-prototype similarity (Guo et al., ICCV 2025).

Each task trains its own subspace, a LoRA slot of rank r // T in every target linear; earlier
subspaces stay frozen. Per task a prototype of the instruction's CLIP text embedding is kept
(and one of the image embedding) as a true running mean over the task's training records.
At inference every layer combines the subspaces with a diagonal mask over their rank blocks,
``ΔW x = Σ_t m_t B_t A_t x`` with ``m = softmax_t(cos(txt, text_prototype_t) / τ)``, τ = 0.05,
per sample.

DisCo is a federated method; like MCITlib and LAMDA-CL PRISM, prism runs its single-client
case (one client learning the task sequence). The MCITlib release routes on the batch mean of
the text features (``routing_input = "batch_mean"``) and adds to a prototype instead of
averaging (a bug prism does not reproduce). PRISM adapts only the FFN (``target_modules = "ffn"``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from prism.methods.task_routed import TaskRoutedMethod, TaskRoutedParams, softmax_weights


class DisCoParams(TaskRoutedParams):
    """DisCo is federated (ICCV 2025); prism, like MCITlib and PRISM, runs its single-client case.
    MCITlib release (UCIT, LLaVA-1.5): every linear layer of the language model, the projector
    trains, routing on text only (batch-mean feature), τ = 0.05; published MFT 75.87, MFN 69.66,
    BWT −7.45. PRISM: FFN modules only."""

    target_modules: str = Field("attn_and_ffn", description="preset or regex (MCITlib: every linear layer "
                                "of the language model; PRISM: ffn)")
    temperature: float = Field(0.05, gt=0, description="τ of the mask softmax over prototype similarities "
                               "(paper: 0.05)")
    image_weight: float = Field(0.0, ge=0, le=1, description="weight of the image-prototype similarity in "
                                "the score, (1 − w)·cos(txt) + w·cos(img) (paper and releases: 0, text only)")
    routing_input: Literal["sample", "batch_mean"] = Field(
        "sample", description="'sample': each sample's own text feature; 'batch_mean' (MCITlib): the mean "
        "feature of the evaluation batch, one mask for the whole batch")


class DisCo(TaskRoutedMethod):
    id = "disco"
    summary = "a LoRA subspace per task, mixed per sample by instruction-prototype similarity"
    Params = DisCoParams

    def mix_slots(self, slots: list[str]) -> None:
        assert self.adapters is not None
        self.adapters.activate(slots)  # every layer: per-sample mask weights arrive with each batch

    def routing_weights(self, batch: Any) -> torch.Tensor:
        sims = self.similarities(batch)
        scores = sims["text"]
        if self.params.routing_input == "batch_mean":
            scores = self._batch_mean_scores(batch)
        weight = float(self.params.image_weight)
        if weight > 0:
            image = sims["image"]
            scores = torch.where(image.isnan(), scores, (1 - weight) * scores + weight * image)
        return softmax_weights(scores, self.params.temperature)

    def _batch_mean_scores(self, batch: Any) -> torch.Tensor:
        """The similarity of the batch's mean text feature, repeated for every sample."""
        features = self.features.text_features(batch)
        mean = torch.nn.functional.normalize(features.mean(0, keepdim=True), dim=-1)
        tasks = [self.slot_tasks[s] for s in self.learned]
        return self.anchors["text"].similarities(mean, tasks).expand(len(batch), -1)
