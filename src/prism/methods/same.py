"""same: a stabilised mixture of LoRA experts (SAME, Xie et al., ICML 2026).

MoE-LoRA on the FFN: each target linear holds E experts (one per task by default; rank
r / E, scaled by α / r, A ~ N(0, 0.01)) and a bias-free linear router. SAME fights the two
drifts of MoE continual learning:

- Router drift, by a spectral-aware router update: an online, low-rank covariance of the
  router's inputs (the top ``max_components`` directions, kept as a running sketch) gives the
  principal subspace holding ``energy`` (0.9) of the input energy; the router's gradient is
  projected onto it and rescaled along each direction by the smoothed inverse singular value
  (a trailing window of ``window``), normalised so the weakest kept direction keeps scale 1.
- Expert drift, by curvature-aware preconditioning from the second task on: each expert's A
  gradient is scaled by 1 / (S_prev + μ) inside the principal subspace of the earlier tasks'
  inputs and by 1 / μ outside it (μ = 0.9).
- Adaptive expert freezing: EMAs (0.95) of each expert's utilisation (mean gate) and importance
  (mean gate × ‖x‖²) give the score norm(utilisation) − norm(importance); experts scoring below
  τ = 0.1 are masked out of the routing and receive no update; the current task's expert is
  always kept.

Training gates each token (softmax over the unmasked experts); inference gates each sample by
the mean of its prompt tokens' gates, top-2 renormalised (the release evaluates one sample per
batch, so its batch mean is this per-sample mean; ``inference_gate = "batch_mean"`` shares one
gate across the batch). Statistics are counted once per optimizer step, from training forwards
only (never from the recomputation of gradient checkpointing or an end-of-task pass), and are
combined across processes under DDP. Routers that read one tensor (q/k/v, gate/up) share its
statistics, and equal sketch updates are decomposed once, all of one width in one batched call
(``same_fold``): the results are each router's own. The method edits gradients, so DeepSpeed is refused.

LAMDA-CL PRISM's port differs: the batch-mean gate also in training, softmax(logits / E) at
inference, a randomised SVD of the current batch every 20 steps as the "covariance", the last
task's subspace as the previous one, the router rescaling clamped to ±20 % from step 10, and
the gate multiplied into both A and B (cross terms); prism follows the description above.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from prism.adapters.routing import seeded_linear_weight
from prism.methods.base import LoRAParams, TaskContext
from prism.methods.experts import ROUTER, ExpertMixture, expert_name  # noqa: F401 (re-exported for tests)
from prism.methods.forward import ForwardContext, ForwardPlan
from prism.methods.same_fold import fold, rows_of
from prism.methods.spectral import DENSE_WIDTH, dense_sketch, input_stats, principal, reduce_step, sketch


class SAMEParams(LoRAParams):
    """Published (SAME / PRISM config): FFN modules, r/α 48/96 UCIT, 64/128 CoIN, 80/160 TriGap, lr 2e-4,
    μ 0.9, energy 0.9, window 3, max_components 64, τ 0.1, EMAs 0.95, top-2 at inference."""

    r: int = Field(48, ge=1, description="total LoRA rank, split over the experts (UCIT 48, CoIN 64, TriGap 80)")
    alpha: float = Field(96.0, gt=0, description="LoRA alpha; every expert is scaled by alpha/r")
    target_modules: str = Field("ffn", description="preset or regex (SAME: the FFN, gate/up/down projections)")
    num_experts: int | None = Field(None, ge=2, description="experts per layer; unset (null): one per task")
    init_a: float = Field(0.01, gt=0, description="std of the normal each expert's A is drawn from")
    energy: float = Field(0.9, gt=0, le=1, description="cumulative energy of the principal subspace (router "
                          "projection and curvature scaling)")
    window: int = Field(3, ge=1, description="trailing window smoothing the singular values of the router rescaling")
    max_components: int = Field(64, ge=1, description="directions kept in the covariance sketches")
    mu: float = Field(0.9, gt=0, description="μ of the curvature scaling 1/(S_prev + μ) inside, 1/μ outside")
    tau: float = Field(0.1, description="experts whose score norm(utilisation) − norm(importance) is below τ freeze")
    ema: float = Field(0.95, ge=0, lt=1, description="decay of the utilisation and importance EMAs")
    top_k: int = Field(2, ge=1, description="experts per sample at inference")
    inference_gate: Literal["sample_mean", "batch_mean"] = Field(
        "sample_mean", description="'sample_mean': each sample's mean prompt-token gate (the release's batch of "
        "one); 'batch_mean': one mean gate for the whole evaluation batch")


class SAMERouter(nn.Module):
    """The router of one layer plus the statistics SAME keeps about its inputs and experts.

    Buffers are part of the adapter file (they are the router's state), so a checkpoint or a
    step checkpoint carries the sketches, EMAs and masks.
    """

    takes_context = True

    def __init__(self, in_features: int, experts: int, q: int, *, generator: torch.Generator | None = None,
                 device: Any = None):
        super().__init__()
        self.weight = seeded_linear_weight(experts, in_features, generator, device)
        self.q = int(q)
        self.register_buffer("task_sketch", torch.zeros(in_features, q, device=device))  # this task's inputs
        self.register_buffer("task_count", torch.zeros((), device=device))
        self.register_buffer("prev_sketch", torch.zeros(in_features, q, device=device))  # earlier tasks' inputs
        self.register_buffer("prev_count", torch.zeros((), device=device))
        self.register_buffer("utilisation", torch.full((experts,), 1.0 / experts, device=device))
        self.register_buffer("importance", torch.full((experts,), 1.0 / experts, device=device))
        self.register_buffer("masks", torch.ones(experts, device=device))
        self.collecting = False
        #: (U, S + μ) of the earlier tasks' input covariance (None: not computed since it last changed)
        self.prev_principal: tuple[Tensor, Tensor] | None = None
        self.step_history: tuple[int, ...] = ()  # the inputs of the step being folded (see same_fold)
        self.top_k = 2
        self.batch_mean = False
        self.reset_pending()

    def reset_pending(self) -> None:
        self.pending_sketches: list[Tensor] = []  # wide inputs: one sketch per micro-batch
        #: "history": the serials of the inputs seen this step (routers with equal histories share them)
        self.pending = {"tokens": 0.0, "gate": None, "energy": None, "gram": None, "history": []}

    def gates(self, x: Tensor) -> Tensor:
        probs = torch.softmax(nn.functional.linear(x, self.weight.to(x.dtype)).float(), dim=-1)
        masked = probs * self.masks.to(probs.device)
        return masked / masked.sum(-1, keepdim=True).clamp_min(1e-12)

    def forward(self, x: Tensor, context: Any = None) -> Tensor:
        mask = None if context is None else context.attention_mask
        if self.training:
            gates = self.gates(x)
            if self.collecting and torch._C._current_graph_task_id() == -1:  # not a checkpoint recomputation
                self._collect(x, gates, mask, None if context is None else context.cache)
            return gates.to(x.dtype)
        cache = {} if context is None else context.cache
        key = f"same_gate_{id(self)}"
        if key not in cache:  # prefill: the prompt's mean gate, reused while decoding
            from prism.adapters.router_context import masked_mean

            mean = masked_mean(self.gates(x), mask)
            if self.batch_mean:
                mean = mean.mean(0, keepdim=True).expand_as(mean)
            cache[key] = top_k(mean, self.top_k)
        return cache[key].to(x.dtype)

    @torch.no_grad()
    def _collect(self, x: Tensor, gates: Tensor, mask: Tensor | None, cache: dict | None) -> None:
        stats = input_stats(x, mask, self.q, cache)  # shared with the other routers reading this x
        weights = gates.detach().reshape(-1, gates.shape[-1])
        if stats.keep is not None:
            weights = weights.index_select(0, stats.keep)
        pending = self.pending
        if stats.gram is not None:  # out of place: the tensor may be another router's too
            pending["gram"] = stats.gram if pending["gram"] is None else pending["gram"] + stats.gram
        else:
            self.pending_sketches.append(stats.sketch)
        pending["history"].append(stats.serial)
        energy = stats.sq @ weights
        pending["tokens"] += stats.tokens
        pending["gate"] = weights.sum(0) if pending["gate"] is None else pending["gate"] + weights.sum(0)
        pending["energy"] = energy if pending["energy"] is None else pending["energy"] + energy


def top_k(gates: Tensor, k: int) -> Tensor:
    if k >= gates.shape[-1]:
        return gates
    kept, index = gates.topk(k, dim=-1)
    return torch.zeros_like(gates).scatter(-1, index, kept / kept.sum(-1, keepdim=True).clamp_min(1e-12))


def normalised(values: Tensor) -> Tensor:
    """Min-max normalised along the last dimension (zeros where all are equal)."""
    low = values.min(-1, keepdim=True).values
    spread = values.max(-1, keepdim=True).values - low
    return torch.where(spread > 0, (values - low) / spread, torch.zeros_like(values))


class SAME(ExpertMixture):
    id = "same"
    summary = "MoE-LoRA with a spectral-aware router, curvature-preconditioned experts and adaptive expert freezing"
    Params = SAMEParams
    edits_gradients = True
    #: frozen experts take no part in a step: DDP must not wait for their gradients
    unused_parameters = True

    def __init__(self, params: SAMEParams, run: Any):
        super().__init__(params, run)
        self.task_index = 0

    def expert_count(self) -> int:
        return int(self.params.num_experts or max(2, self.run.num_tasks))

    def make_router(self, layer, generator) -> SAMERouter:
        from prism.adapters.layers import module_device

        router = SAMERouter(layer.in_features, len(self.experts), self.params.max_components, generator=generator,
                            device=module_device(layer.base_layer))
        router.top_k, router.batch_mean = self.params.top_k, self.params.inference_gate == "batch_mean"
        return router

    def layers(self) -> list[tuple[Any, SAMERouter]]:
        assert self.adapters is not None
        return [(layer, layer.routers[ROUTER]) for layer in self.adapters.layers.values()]

    @property
    def current_expert(self) -> int:
        return min(self.task_index, len(self.experts) - 1)

    # -- training ----------------------------------------------------------------------------
    def begin_task(self, task: TaskContext) -> None:
        super().begin_task(task)
        self.task_index = task.index
        for _, router in self.layers():
            router.task_sketch.zero_()
            router.task_count.zero_()
            router.utilisation.fill_(1.0 / len(self.experts))
            router.masks.fill_(1.0)
            router.prev_principal = None
            router.reset_pending()

    def prepare_forward(self, batch, context: ForwardContext) -> ForwardPlan:
        for _, router in self.layers():  # statistics from training steps only
            router.collecting = context.phase == "train"
        return ForwardPlan()  # a fresh router context: the live attention mask, a per-call cache

    def on_gradients(self, task: TaskContext, parameters: dict[str, nn.Parameter]) -> None:
        """Fold this step's statistics in, then project the router gradients and precondition the experts."""
        layers = self.layers()
        routers = [router for _, router in layers]
        subspaces = fold(routers, [self._fold_step(router) for router in routers], self.params.energy,
                         self.params.window)
        frozen = rows_of([router.masks for _, router in layers], lambda masks: masks.eq(0))
        for (layer, router), subspace, off in zip(layers, subspaces, frozen):
            for name, freeze in zip(self.experts, off):  # frozen experts: no update at all (AdamW skips them)
                if freeze:
                    layer.lora_A[name].weight.grad = None
                    layer.lora_B[name].weight.grad = None
            self._project_router_gradient(router, subspace)
            if task.index > 0:
                self._precondition_experts(layer, router)

    def after_step(self, task: TaskContext, step: int) -> None:
        """Refresh the expert masks from the EMAs (the current task's expert always kept)."""
        routers = [router for _, router in self.layers()]
        by_device: dict[Any, list[SAMERouter]] = {}
        for router in routers:
            by_device.setdefault(router.masks.device, []).append(router)
        for group in by_device.values():  # every layer at once
            utilisation = torch.stack([router.utilisation for router in group])
            importance = torch.stack([router.importance for router in group])
            masks = (normalised(utilisation) - normalised(importance) >= self.params.tau).float()
            masks[:, self.current_expert] = 1.0
            for router, row in zip(group, masks):
                router.masks.copy_(row)

    def end_task(self, task: TaskContext, fit) -> None:
        """The task's input covariance joins the earlier tasks' (the curvature of the next tasks)."""
        super().end_task(task, fit)
        for _, router in self.layers():
            combined = torch.cat([router.prev_sketch, router.task_sketch], dim=1)
            merged = dense_sketch(combined @ combined.T, router.q) if combined.shape[0] <= DENSE_WIDTH \
                else sketch(combined.T, router.q)
            router.prev_sketch.copy_(merged)
            router.prev_principal = None
            router.prev_count += router.task_count
            router.collecting = False

    @torch.no_grad()
    def _fold_step(self, router: SAMERouter) -> tuple[Tensor, Tensor | None]:
        """This optimizer step's statistics (every process's, under DDP) into the task's count and EMAs;
        returns the step's new input sketches and Gram matrix for the task sketch."""
        pending, experts = router.pending, router.utilisation.shape[0]
        device = router.task_sketch.device
        local = torch.cat(router.pending_sketches, dim=1) if router.pending_sketches else router.task_sketch[:, :0]
        gram, count, gate, energy = pending["gram"], pending["tokens"], pending["gate"], pending["energy"]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            tokens = torch.tensor([count], device=device)
            gate = gate if gate is not None else torch.zeros(experts, device=device)
            energy = energy if energy is not None else torch.zeros(experts, device=device)
            gram = None if gram is None else gram.clone()  # reduced in place; the tensor may be shared
            local, gram, tokens, gate, energy = reduce_step(local.to(device), gram, tokens, gate.to(device),
                                                       energy.to(device), router.task_sketch.shape[0])
            count = float(tokens.sum())
        router.task_count += count
        if count > 0:
            decay = self.params.ema
            router.utilisation.mul_(decay).add_(gate.to(device) / count, alpha=1 - decay)
            router.importance.mul_(decay).add_(energy.to(device) / count, alpha=1 - decay)
        router.step_history = tuple(pending["history"])
        router.reset_pending()
        return local, gram

    def _project_router_gradient(self, router: SAMERouter, subspace: tuple[Tensor, Tensor] | None) -> None:
        grad = router.weight.grad
        if grad is None or subspace is None:
            return
        u, scale = (t.to(grad.device, grad.dtype) for t in subspace)
        grad.copy_(((grad @ u) * scale) @ u.T)

    def _precondition_experts(self, layer: Any, router: SAMERouter) -> None:
        if router.prev_principal is None:
            if float(router.prev_count) <= 0:
                return
            u, s = principal(router.prev_sketch, float(router.prev_count), self.params.energy)
            router.prev_principal = (u, s + self.params.mu)
        u, shifted = router.prev_principal
        grads = [grad for name in self.experts if (grad := layer.lora_A[name].weight.grad) is not None]
        if not grads:
            return
        stacked = torch.cat(grads)  # every expert's A gradient [E·r, d_in], scaled at once
        basis, shifted = u.to(stacked.device, stacked.dtype), shifted.to(stacked.device, stacked.dtype)
        inside = stacked @ basis  # coordinates in the earlier tasks' principal subspace
        scaled = (inside / shifted) @ basis.T + (stacked - inside @ basis.T) / self.params.mu
        for grad, new in zip(grads, scaled.split([g.shape[0] for g in grads])):
            grad.copy_(new)

    # -- state -------------------------------------------------------------------------------
    def step_state(self) -> dict[str, Tensor]:
        """Every router's sketches, EMAs and masks (they are buffers, not trainable weights)."""
        return {f"{row}.{name}": buffer.detach().clone() for row, (_, router) in enumerate(self.layers())
                for name, buffer in router.named_buffers()}

    @torch.no_grad()
    def load_step_state(self, tensors: dict[str, Tensor]) -> None:
        for row, (_, router) in enumerate(self.layers()):
            for name, buffer in router.named_buffers():
                key = f"{row}.{name}"
                if key in tensors:
                    buffer.copy_(tensors[key].to(buffer.device, buffer.dtype))
            router.prev_principal = None

    def state_metadata(self) -> dict[str, Any]:
        return {"experts": self.experts, "task_index": self.task_index}

    def load_state(self, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
        from prism.errors import CheckpointError

        saved = metadata.get("experts")
        if saved is not None and list(saved) != self.experts:
            raise CheckpointError(f"the checkpoint holds experts {saved}; these settings make {self.experts}",
                                  hint="set [method.same] num_experts as in the run that saved it")
        self.task_index = int(metadata.get("task_index", 0))
