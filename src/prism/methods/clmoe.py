"""clmoe: dual-router, dual-momentum mixture of LoRA experts (CL-MoE, Huai et al., CVPR 2025).

Each target linear holds E experts (LoRA slots of rank r / E, scaled by α / r) and an
instance-level router, a per-token softmax over the experts (as moelora). Every expert and
router trains on every task. Three things make it continual:

- Usage: after a task, a pass over its training data counts, per layer, how often each
  expert is among the instance router's top ``usage_top_k`` for a real (non-padding) token.
  The counts are saved with every checkpoint.
- Task-level router (global experts): a task's gate in a layer is uniform over the experts
  it used most there (its top ``usage_top_k``). At inference the task is estimated from
  per-task prototypes (running means of the CLIP instruction and image embeddings of its
  training records, as hide_llava's anchors) and the gates combine additively:
  ``g = β · G_instance(x) + (1 − β) · G_task(t̂)``, β = 0.5. During training the instance
  router alone gates, as in the release.
- Dual momentum: after task t ≥ 1 every expert's weights are blended with their values
  before the task, ``θ ← λ θ_old + (1 − λ) θ_new``. An expert among the old tasks' most
  used but not the new task's gets λ = 0.3; every other expert λ = 0.7 (the release's values).

The release never applies its merge (its top-8 lists hold every expert when E ≤ 8, and its
key test never matches) and comments out the task-level gate; prism implements both, as
published. The estimated task is recorded with each prediction (``metadata.routing``), so
``routing_accuracy`` says how often the prototypes found the sample's task.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from prism.adapters.routing import TokenRouter
from prism.methods.base import FitHandle, LoRAParams, TaskContext
from prism.methods.experts import ROUTER, ExpertMixture, expert_name  # noqa: F401 (re-exported for tests)
from prism.methods.forward import ForwardContext, ForwardPlan

TASK = "clmoe_task"  # the per-sample tensor holding each sample's estimated task (a column index)


class CLMoEParams(LoRAParams):
    """Released code defaults: r 32, α 64, 4 experts, lr 2e-4; momentum 0.3 / 0.7 and β 0.5 as released."""

    r: int = Field(32, ge=1, description="total LoRA rank, split into num_experts experts (release: 32)")
    alpha: float = Field(64.0, gt=0, description="LoRA alpha; every expert is scaled by alpha/r (release: 64)")
    num_experts: int = Field(4, ge=2, description="experts per layer (release: 4)")
    init_a: float = Field(0.01, gt=0, description="std of the normal each expert's A is drawn from")
    beta: float = Field(0.5, ge=0, le=1, description="β: weight of the instance router against the task-level "
                        "gate at inference (release: 0.5)")
    usage_top_k: int = Field(2, ge=1, description="experts per token counted as used, and the task gate's "
                             "experts (the release's top-2 statistics)")
    momentum_old_only: float = Field(0.3, ge=0, le=1, description="λ (weight on the old value) for an expert "
                                     "among the old tasks' most used but not the new task's (release: 0.3)")
    momentum_other: float = Field(0.7, ge=0, le=1, description="λ for every other expert (release: 0.7)")
    usage_batches: int = Field(50, ge=1, description="batches of the end-of-task pass that counts expert usage "
                               "and builds the task's prototypes")
    usage_batch_size: int = Field(16, ge=1, description="records per batch of that pass")


class TaskGatedRouter(TokenRouter):
    """The instance router, plus (at inference) the task-level gate of each sample's estimated task."""

    takes_context = True

    def __init__(self, *args: Any, beta: float = 0.5, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.beta = float(beta)
        #: [T, E] task-level gates (set by the method for inference; None while training)
        self.prior: Tensor | None = None
        #: expert-usage counts [E] accumulated while ``recording`` (the end-of-task pass)
        self.recording = False
        self.top_k_used = 2
        self.usage: Tensor | None = None

    def forward(self, x: Tensor, context: Any = None) -> Tensor:
        gates = super().forward(x)
        if self.recording:
            self._count(gates, None if context is None else context.attention_mask)
        if self.prior is not None and context is not None and TASK in context.sample:
            prior = self.prior.to(gates.device, gates.dtype)[context.sample[TASK].to(gates.device)]
            gates = self.beta * gates + (1.0 - self.beta) * prior.unsqueeze(1)
        return gates

    @torch.no_grad()
    def _count(self, gates: Tensor, mask: Tensor | None) -> None:
        k = min(self.top_k_used, gates.shape[-1])
        chosen = torch.nn.functional.one_hot(gates.topk(k, dim=-1).indices, gates.shape[-1]).sum(-2).float()
        if mask is not None:
            chosen = chosen * mask[:, -gates.shape[1]:].to(chosen.dtype).unsqueeze(-1)
        counts = chosen.reshape(-1, gates.shape[-1]).sum(0).cpu()
        self.usage = counts if self.usage is None else self.usage + counts


class CLMoE(ExpertMixture):
    id = "clmoe"
    summary = "LoRA experts with instance and task-level routers; experts merged by dual momentum after each task"
    Params = CLMoEParams

    def __init__(self, params: CLMoEParams, run: Any):
        super().__init__(params, run)
        self.usage: dict[str, Tensor] = {}  # task -> [layers, E] usage counts, in the order learned
        self.old: dict[str, Tensor] | None = None  # expert weights before the current task
        self.inference_tasks: list[str] = []
        self.anchors: dict[str, Any] = {}
        self.features: Any = None

    def expert_count(self) -> int:
        return int(self.params.num_experts)

    def make_router(self, layer, generator) -> TaskGatedRouter:
        from prism.adapters.layers import module_device

        return TaskGatedRouter(layer.in_features, len(self.experts), beta=self.params.beta, generator=generator,
                               device=module_device(layer.base_layer))

    def attach(self, backbone) -> None:
        from prism.backbones.anchors import TaskAnchors
        from prism.backbones.routing import routing_tower_for
        from prism.backbones.routing_features import FeatureCache

        super().attach(backbone)
        tower = routing_tower_for(None, backbone)
        self.features = FeatureCache(tower)
        self.anchors = {kind: TaskAnchors.for_tower(kind, tower) for kind in ("image", "text")}

    # -- training ----------------------------------------------------------------------------
    def begin_task(self, task: TaskContext) -> None:
        from prism.adapters.slot_ops import snapshot

        super().begin_task(task)
        for router in self.routers():
            router.prior = None  # training: the instance router alone
        self.old = snapshot(self.adapters, self.experts) if self.usage else None

    def prepare_forward(self, batch, context: ForwardContext) -> ForwardPlan:
        if context.phase != "eval" or not self.inference_tasks:
            return ForwardPlan()  # a fresh router context (the live attention mask), no task gate
        task = self.estimate_task(batch)
        columns = torch.nn.functional.one_hot(task, len(self.inference_tasks)).float()
        return ForwardPlan(sample={TASK: task}, routing=columns, routing_slots=tuple(self.inference_tasks))

    def end_task(self, task: TaskContext, fit: FitHandle) -> None:
        """Count expert usage and build prototypes over the task's data, then merge by dual momentum."""
        super().end_task(task, fit)
        for kind in self.anchors:
            self.anchors[kind].forget(task.name)
        routers = self.routers()
        for router in routers:
            router.recording, router.usage, router.top_k_used = True, None, self.params.usage_top_k
        try:
            with torch.no_grad():
                for batch in fit.batches(limit=self.params.usage_batches, batch_size=self.params.usage_batch_size):
                    fit.forward(batch)
                    self._add_prototypes(task.name, batch)
        finally:
            for router in routers:
                router.recording = False
        dim = self.params.num_experts
        self.usage[task.name] = torch.stack([r.usage if r.usage is not None else torch.zeros(dim) for r in routers])
        if self.old is not None:
            self.merge(task.name)
        self.old = None

    def _add_prototypes(self, task: str, batch: Any) -> None:
        features, has_image = self.features.image_features(batch)
        if bool(has_image.any()):
            self.anchors["image"].add(task, features[has_image])
        self.anchors["text"].add(task, self.features.text_features(batch))

    def top_experts(self, counts: Tensor) -> Tensor:
        """``[layers, E]`` bool: each layer's ``usage_top_k`` most used experts in ``counts``."""
        k = min(self.params.usage_top_k, counts.shape[-1])
        return torch.zeros_like(counts, dtype=torch.bool).scatter(-1, counts.topk(k, dim=-1).indices, True)

    @torch.no_grad()
    def merge(self, new_task: str) -> None:
        """θ ← λ θ_old + (1 − λ) θ_new per expert and layer, λ by whether it served the new task."""
        assert self.adapters is not None and self.old is not None
        old_counts = sum(c for t, c in self.usage.items() if t != new_task)
        old_top, new_top = self.top_experts(old_counts), self.top_experts(self.usage[new_task])
        live = self.adapters.named_parameters(self.experts)
        for row, path in enumerate(self.adapters.layers):
            for column, expert in enumerate(self.experts):
                keep = self.params.momentum_old_only if old_top[row, column] and not new_top[row, column] \
                    else self.params.momentum_other
                for factor in ("lora_A", "lora_B"):
                    key = f"{path}.{factor}.{expert}.weight"
                    param = live[key]
                    param.mul_(1.0 - keep).add_(self.old[key].to(param.device, param.dtype), alpha=keep)

    # -- inference -----------------------------------------------------------------------------
    def prepare_inference(self, learned: TaskContext) -> None:
        """Task-level gates of every learned task, uniform over its most used experts per layer."""
        seen = {spec.name for spec in learned.seen}
        self.inference_tasks = [t for t in self.usage if t in seen]
        if not self.inference_tasks:
            return
        gates = torch.stack([self.top_experts(self.usage[t]).float() for t in self.inference_tasks])  # [T, L, E]
        gates = gates / gates.sum(-1, keepdim=True).clamp_min(1.0)
        for row, router in enumerate(self.routers()):
            router.prior = gates[:, row, :]

    def estimate_task(self, batch: Any) -> Tensor:
        """Each sample's task: the prototype with the highest mean of text and image similarity."""
        tasks = self.inference_tasks
        text = self.anchors["text"].similarities(self.features.text_features(batch), tasks)
        image_features, has_image = self.features.image_features(batch)
        present = [t for t in tasks if t in self.anchors["image"].tasks]
        scores = text.clone()
        if present and bool(has_image.any()):
            image = torch.full_like(text, float("nan"))
            image[:, [tasks.index(t) for t in present]] = self.anchors["image"].similarities(image_features, present)
            image[~has_image] = float("nan")
            scores = torch.stack([text, image]).nanmean(0)
        return scores.argmax(-1)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        state = {f"usage.{task}": counts.clone() for task, counts in self.usage.items()}
        for anchors in self.anchors.values():
            state.update(anchors.state_dict())
        return state

    def state_metadata(self) -> dict[str, Any]:
        assert self.adapters is not None
        return {"tasks": list(self.usage), "layers": len(self.adapters.layers), "experts": self.experts,
                "anchors": {kind: a.metadata() for kind, a in self.anchors.items()}}

    def load_state(self, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
        from prism.backbones.anchors import TaskAnchors
        from prism.errors import CheckpointError

        assert self.adapters is not None and self.backbone is not None
        if metadata.get("experts", self.experts) != self.experts or \
                metadata.get("layers", len(self.adapters.layers)) != len(self.adapters.layers):
            raise CheckpointError(f"the checkpoint's experts {metadata.get('experts')} over {metadata.get('layers')} "
                                  f"layers do not match these settings ({self.experts}, {len(self.adapters.layers)})",
                                  hint="set [method.clmoe] as in the run that saved it")
        self.usage = {task: tensors[f"usage.{task}"].float() for task in metadata.get("tasks", [])}
        tower = self.features.tower
        for kind, saved in metadata.get("anchors", {}).items():
            self.anchors[kind] = TaskAnchors.from_state(tensors, saved, tower, where="clmoe checkpoint")
