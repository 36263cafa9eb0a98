"""modal_prompt: dual-modality guided prompts (ModalPrompt, Zeng et al., EMNLP 2025).

The whole model stays frozen and there is no LoRA. Each task t owns ``prefix_len`` learnable
prompt vectors in the language model's embedding space and an MLP
``Linear(h, h) → SiLU → Linear(h, d_clip)`` mapping them into the routing tower's CLIP space;
the task's prototype p_t is the mean of its mapped prompts. A sample's affinity with task t is

    score_t = λ · cos(CLIP image, p_t) + (1 − λ) · cos(CLIP text, p_t),   λ = 0.5

(the text term alone for a sample without an image). Training inserts, right after BOS, the
current task's prompt followed by the K − 1 best-scoring earlier tasks' prompts (K =
``transfer_num``), and the loss is CE + (1 − cos(img, p_t)) + (1 − cos(txt, p_t)) for the
current task's prototype (unweighted). Inference inserts the prompts of the K best-scoring
learned tasks, best first. Only the current task's prompts and MLP train.

Original: prefix_len 10, transfer_num 3, λ 0.5, 10 epochs, lr 2e-4. LAMDA-CL PRISM: prefix_len
96, transfer_num 1. The checkpoint holds the prompts and MLPs (prism_state.safetensors), no LoRA.
Each prediction records the prompts it used (``metadata.routing``: softmax of the chosen tasks'
scores, 0 for the others), so ``routing_accuracy`` is how often the best prompt was the sample's
own task's.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from prism.methods.base import Method, MethodParams, TaskContext
from prism.methods.forward import ForwardContext, ForwardPlan

MODULE = "modal_prompt"


class ModalPromptParams(MethodParams):
    """Original (EMNLP 2025 release): prefix_len 10, transfer_num 3, λ 0.5, 10 epochs, lr 2e-4.
    LAMDA-CL PRISM: prefix_len 96, transfer_num 1."""

    prefix_len: int = Field(10, ge=1, description="prompt vectors per task (original: 10; PRISM: 96)")
    transfer_num: int = Field(3, ge=1, description="K: prompts inserted per sample, the current task's and the "
                              "K−1 best earlier ones in training, the K best at inference (original: 3; PRISM: 1)")
    lam: float = Field(0.5, ge=0, le=1, description="λ weighting image against text similarity in the task "
                       "score (original: 0.5)")


class PromptBank(nn.Module):
    """Every task's prompts ``[T, P, h]`` and prompt-to-CLIP MLPs (created at once: fixed shapes)."""

    def __init__(self, tasks: int, length: int, hidden: int, clip_dim: int, *, scale: float, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        #: one parameter per task, so the optimizer holds only the current task's (weight decay included)
        self.prompts = nn.ParameterList(nn.Parameter(torch.randn(length, hidden, generator=generator) * scale)
                                        for _ in range(tasks))
        self.mlps = nn.ModuleList()
        for _ in range(tasks):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            self.mlps.append(nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, clip_dim)))

    def prototype(self, task: int) -> Tensor:
        """p_t: the mean of task ``task``'s prompts mapped into CLIP space."""
        return self.mlps[task](self.prompts[task]).mean(0)

    def prototypes(self, tasks: list[int]) -> Tensor:
        return torch.stack([self.prototype(t) for t in tasks])


class ModalPrompt(Method):
    id = "modal_prompt"
    summary = "frozen model; per-task prompts inserted after BOS, chosen by CLIP image/text prototype similarity"
    Params = ModalPromptParams
    #: other tasks' prompts and MLPs sit in the model without gradients
    unused_parameters = True

    def __init__(self, params: ModalPromptParams, run: Any):
        super().__init__(params, run)
        self.current = 0
        self.learned: list[int] = []
        self.features: Any = None
        self._train_targets: tuple[Tensor, Tensor, Tensor] | None = None

    def attach(self, backbone) -> None:
        from prism.backbones.routing import routing_tower_for
        from prism.backbones.routing_features import FeatureCache

        super().attach(backbone)
        backbone.model.requires_grad_(False)
        tower = routing_tower_for(None, backbone)
        self.features = FeatureCache(tower)
        embeddings = backbone.model.get_input_embeddings().weight
        self.bank = self.own_module(MODULE, PromptBank(
            self.run.num_tasks, self.params.prefix_len, embeddings.shape[1], tower.dim,
            scale=float(embeddings.detach().float().std()), seed=self.run.seed))
        self.bank.requires_grad_(False)

    # -- training ----------------------------------------------------------------------------
    def begin_task(self, task: TaskContext) -> None:
        self.current = task.index
        self.bank.requires_grad_(False)
        self.bank.prompts[task.index].requires_grad_(True)
        self.bank.mlps[task.index].requires_grad_(True)

    def scores(self, batch: Any, tasks: list[int]) -> Tensor:
        """``[B, len(tasks)]``: λ·cos(img, p_t) + (1−λ)·cos(txt, p_t); text alone without an image."""
        image, has_image = self.features.image_features(batch)
        text = self.features.text_features(batch)
        with torch.no_grad():
            prototypes = nn.functional.normalize(self.bank.prototypes(tasks).float(), dim=-1).cpu()
        lam = self.params.lam
        by_text = text.float() @ prototypes.T
        by_image = image.float() @ prototypes.T
        return torch.where(has_image.unsqueeze(1), lam * by_image + (1 - lam) * by_text, by_text)

    def prepare_forward(self, batch, context: ForwardContext) -> ForwardPlan:
        if context.phase == "eval":
            tasks = self.learned
            scores = self.scores(batch, tasks)
            k = min(self.params.transfer_num, len(tasks))
            chosen = scores.topk(k, dim=-1).indices  # [B, k] columns into ``tasks``, best first
            picked = [[tasks[int(c)] for c in row] for row in chosen]
            routing = torch.zeros_like(scores)
            routing.scatter_(1, chosen, torch.softmax(scores.gather(1, chosen), dim=-1))
            plan = ForwardPlan(inputs=self.inputs_with_prompts(batch, picked), routing=routing,
                               routing_slots=tuple(self.run.task_names[t] for t in tasks))
            return plan
        earlier = [t for t in self.learned if t != self.current]
        picked = [[self.current] for _ in range(len(batch))]
        if earlier and self.params.transfer_num > 1:
            scores = self.scores(batch, earlier)
            k = min(self.params.transfer_num - 1, len(earlier))
            best = scores.topk(k, dim=-1).indices
            picked = [[self.current, *[earlier[int(c)] for c in row]] for row in best]
        if context.phase == "train":
            image, has_image = self.features.image_features(batch)
            self._train_targets = (image, has_image, self.features.text_features(batch))
        return ForwardPlan(inputs=self.inputs_with_prompts(batch, picked))

    def inputs_with_prompts(self, batch: Any, picked: list[list[int]]) -> dict[str, Tensor]:
        """The batch's inputs as embeddings with each sample's chosen prompts inserted after BOS."""
        from prism.engine.forward_plan import insert_prefix

        model = self.backbone.model
        embeds = model.get_input_embeddings()(batch.input_ids)
        # earlier tasks' prompts are inserted as they are: only the current task's learns
        prefix = torch.stack([torch.cat([self.bank.prompts[t] if t == self.current else self.bank.prompts[t].detach()
                                         for t in row]) for row in picked]).to(embeds.dtype)
        out, mask, labels = insert_prefix(embeds, batch.attention_mask, prefix, labels=batch.labels)
        inputs = {"inputs_embeds": out, "attention_mask": mask}
        if labels is not None:
            inputs["labels"] = labels
        if batch.pixel_values is not None:
            inputs["pixel_values"] = batch.pixel_values
        return inputs

    def loss(self, task: TaskContext, batch: Any, outputs: Any) -> Tensor:
        """CE + (1 − cos(img, p_t)) + (1 − cos(txt, p_t)), means over the batch (images: samples with one)."""
        loss = outputs.loss
        if self._train_targets is None:
            return loss
        image, has_image, text = self._train_targets
        prototype = nn.functional.normalize(self.bank.prototype(self.current).float(), dim=-1)
        device = prototype.device
        loss = loss + (1 - text.to(device).float() @ prototype).mean()
        if bool(has_image.any()):
            loss = loss + (1 - image[has_image].to(device).float() @ prototype).mean()
        self._train_targets = None
        return loss

    def end_task(self, task: TaskContext, fit) -> None:
        self.bank.requires_grad_(False)
        if task.index not in self.learned:
            self.learned.append(task.index)

    # -- inference / state ---------------------------------------------------------------------
    def prepare_inference(self, learned: TaskContext) -> None:
        self.learned = [i for i in range(learned.index + 1)]

    def state_metadata(self) -> dict[str, Any]:
        return {"learned": list(self.learned), "clip_dim": int(self.features.tower.dim)}

    def load_state(self, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
        from prism.backbones.routing import check_feature_dim
        from prism.errors import CheckpointError

        check_feature_dim(int(metadata.get("clip_dim", self.features.tower.dim)), self.features.tower.dim,
                          "modal_prompt checkpoint: prompt-to-CLIP MLPs", tower=self.features.tower.source,
                          error=CheckpointError)
        self.learned = [int(t) for t in metadata.get("learned", [])]
        self.bank.requires_grad_(False)
