"""The shared mechanics of task-routed methods (hide_llava, disco): a LoRA slot per task and
per-task CLIP anchors that decide, per test sample, how the slots mix.

Training: task t adds slot ``task<t>`` (rank r // T, scaled by α / r: the total rank's
scaling, as both releases split one LoRA of rank r into T experts) to every target linear;
only that slot is active and trains, with the projector when the method trains it. After the
task, one pass over its training records folds their CLIP image and instruction embeddings
into the task's anchors (running means over the records: each record once, the same on every
rank). At evaluation the routing tower embeds each test sample and compares it with every
learned task's anchors; the subclass turns those similarities into slot weights for the
layers it routes (``routed_layers``) and says how the other layers combine the slots.

Routing is recorded with every prediction (``metadata.routing``), so ``routing_accuracy``
shows how often a sample's largest weight fell on its own task's slot.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from prism.methods.base import FitHandle, LoRAParams, Method, TaskContext
from prism.methods.forward import ForwardContext, ForwardPlan, SlotWeights


def slot_name(index: int) -> str:
    return f"task{index}"


class TaskRoutedParams(LoRAParams):
    """LoRA settings of a task-routed method: ``r`` is the total rank, split over the tasks."""

    r: int = Field(48, ge=1, description="total LoRA rank, split into one slot of r // number of tasks per "
                   "task (at least 1)")
    alpha: float = Field(96.0, gt=0, description="LoRA alpha; every slot is scaled by alpha/r (the total rank)")
    train_projector: bool = Field(True, description="train the multimodal projector with each task's slot "
                                  "(at [train] projector_lr when set); saved with every task checkpoint")
    text_features: Literal["projected", "pooled"] = Field(
        "projected", description="instruction features: 'projected' (CLIP's text embedding, in the image "
        "embedding space) or 'pooled' (CLIP's pooled text output before the projection)")
    init_a: Literal["kaiming", "gaussian"] | float = Field(
        "kaiming", description="how each slot's A is drawn: 'kaiming' (LoRA's default), 'gaussian' "
        "(N(0, 1/r)) or a std, e.g. 0.01 (the HiDe-LLaVA release: N(0, 0.01))")
    anchor_batch_size: int = Field(32, ge=1, description="records per batch of the end-of-task pass that "
                                   "builds the task's anchors")


class TaskRoutedMethod(Method):
    """A slot per task, CLIP anchors per task, per-sample slot weights at evaluation."""

    Params = TaskRoutedParams
    #: the projector is shared by every task: it trains at LLaVA-1.5's LoRA-recipe projector lr
    #: (HiDe-LLaVA's UCIT scripts: lr 2e-4, mm_projector_lr 2e-5); prism.toml's [train] wins
    config_defaults = {"train": {"projector_lr": 2e-5}}
    #: the anchors a subclass keeps, by name ("image", "text")
    anchor_kinds: tuple[str, ...] = ("image", "text")

    def __init__(self, params: TaskRoutedParams, run: Any):
        super().__init__(params, run)
        self.current: str | None = None
        self.slot_tasks: dict[str, str] = {}  # slot -> task name, in the order learned
        self.anchors: dict[str, Any] = {}
        self.features: Any = None
        self.tower: Any = None
        self.learned: list[str] = []  # slots answering at evaluation (prepare_inference)

    # -- set-up ----------------------------------------------------------------------------
    @property
    def slot_rank(self) -> int:
        return max(1, int(self.params.r) // max(1, self.run.num_tasks))

    @property
    def slot_scaling(self) -> float:
        """Every slot's update is scaled by the total rank's alpha / r."""
        return float(self.params.alpha) / float(self.params.r)

    def attach(self, backbone) -> None:
        from prism.adapters import inject_adapters
        from prism.backbones.routing import routing_tower_for
        from prism.backbones.routing_features import FeatureCache, PooledClipText

        super().attach(backbone)
        self.adapters = inject_adapters(backbone.model, backbone.target_regex(self.params.target_modules))
        self.adapters.freeze_base()
        if self.params.train_projector:
            self.train_base("multi_modal_projector")
        self.tower = routing_tower_for(None, backbone)
        text = PooledClipText(self.tower) if self.params.text_features == "pooled" else None
        self.features = FeatureCache(self.tower, text_encoder=text)
        for kind in self.anchor_kinds:
            self.anchors[kind] = self._new_anchors(kind)

    def _new_anchors(self, kind: str) -> Any:
        from prism.backbones.anchors import TaskAnchors

        if kind == "text":
            encoder = self.features.text_encoder
            return TaskAnchors("text", encoder.dim, tower=self.tower.source,
                               fingerprint=getattr(encoder, "fingerprint", self.tower.fingerprint))
        return TaskAnchors.for_tower(kind, self.tower)

    def _train_projector(self) -> None:
        assert self.backbone is not None
        params = dict(self.backbone.model.named_parameters())
        for name in self.trained_base:
            params[name].requires_grad_(True)

    # -- training ----------------------------------------------------------------------------
    def begin_task(self, task: TaskContext) -> None:
        """Add this task's slot; only it (and the projector) trains, only it is in the forward."""
        assert self.adapters is not None
        name = slot_name(task.index)
        self.adapters.add_slot(name, r=self.slot_rank, alpha=self.params.alpha, scaling=self.slot_scaling,
                               dropout=self.params.dropout, seed=self.run.seed + task.index, exist_ok=True,
                               init=self.params.init_a)
        self.slot_tasks[name] = task.name
        self.adapters.clear_mix()
        self.adapters.set_trainable([name])
        self._train_projector()
        self.adapters.activate([name])
        self.current = name

    def prepare_forward(self, batch, context: ForwardContext) -> ForwardPlan | None:
        if context.phase != "eval":
            return None  # training and the end-of-task pass: the current slot alone
        weights = self.oracle_weights(context.oracle_task, len(batch)) if context.oracle_task \
            else self.routing_weights(batch)
        return ForwardPlan(slot_weights=[SlotWeights(weights, layers=self.routed_layers())],
                           routing=weights, routing_slots=tuple(self.slot_tasks[s] for s in self.learned))

    def end_task(self, task: TaskContext, fit: FitHandle) -> None:
        """Freeze the slot and fold the task's training records into its anchors."""
        assert self.adapters is not None
        self.adapters.set_trainable([])
        for kind in self.anchors:
            self.anchors[kind].forget(task.name)  # a re-run of this task replaces its anchors
        for batch in fit.batches(batch_size=self.params.anchor_batch_size):
            self.add_to_anchors(task.name, batch)

    def add_to_anchors(self, task: str, batch: Any) -> None:
        if "image" in self.anchors:
            features, has_image = self.features.image_features(batch)
            if bool(has_image.any()):
                self.anchors["image"].add(task, features[has_image])
        if "text" in self.anchors:
            self.anchors["text"].add(task, self.features.text_features(batch))

    # -- inference -----------------------------------------------------------------------------
    def prepare_inference(self, learned: TaskContext) -> None:
        """Every slot learned up to ``learned``, in task order, mixed as the subclass says."""
        assert self.adapters is not None
        wanted = {slot_name(i) for i in range(learned.index + 1)}
        self.learned = [s for s in self.slot_tasks if s in wanted and s in self.adapters.slots]
        self.adapters.clear_mix()
        self.mix_slots(self.learned)

    def mix_slots(self, slots: list[str]) -> None:
        """Set how the layers combine ``slots`` (the routed ones get per-sample weights per batch)."""
        raise NotImplementedError

    def routed_layers(self) -> Any:
        """The layers the per-sample weights apply to (an AdapterSet.select filter; None: all)."""
        return None

    def similarities(self, batch: Any) -> dict[str, torch.Tensor]:
        """Per anchor kind: ``[B, T]`` cosine similarity of each sample with each learned task's anchor
        (image rows of text-only samples are NaN)."""
        tasks = [self.slot_tasks[s] for s in self.learned]
        out: dict[str, torch.Tensor] = {}
        if "image" in self.anchors:
            features, has_image = self.features.image_features(batch)
            present = [t for t in tasks if t in self.anchors["image"].tasks]
            sims = torch.full((len(batch), len(tasks)), float("nan"))
            if present:
                columns = [tasks.index(t) for t in present]
                sims[:, columns] = self.anchors["image"].similarities(features, present)
            sims[~has_image] = float("nan")
            out["image"] = sims
        if "text" in self.anchors:
            out["text"] = self.anchors["text"].similarities(self.features.text_features(batch), tasks)
        return out

    def routing_weights(self, batch: Any) -> torch.Tensor:
        """``[B, T]`` weights over the learned slots (rows sum to 1)."""
        raise NotImplementedError

    def oracle_weights(self, task: str, size: int) -> torch.Tensor:
        """With ``[infer] task_oracle``: every sample on its true task's slot (routing's upper bound)."""
        tasks = [self.slot_tasks[s] for s in self.learned]
        if task not in tasks:
            raise ValueError(f"task {task!r} has no slot among the learned tasks {tasks}")
        return torch.nn.functional.one_hot(torch.full((size,), tasks.index(task)), len(tasks)).float()

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for anchors in self.anchors.values():
            state.update(anchors.state_dict())
        return state

    def state_metadata(self) -> dict[str, Any]:
        assert self.adapters is not None
        slots = {}
        for name, task in self.slot_tasks.items():
            spec = self.adapters.spec(name)
            slots[name] = {"task": task, "r": spec.r, "alpha": spec.alpha, "dropout": spec.dropout}
        return {"slots": slots, "anchors": {kind: a.metadata() for kind, a in self.anchors.items()}}

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        """Re-create the slots as trained and the anchors, checked against this run's routing tower."""
        from prism.backbones.anchors import TaskAnchors
        from prism.errors import CheckpointError

        assert self.adapters is not None
        self.slot_tasks = {}
        for name, spec in metadata.get("slots", {}).items():
            self.adapters.add_slot(name, r=int(spec["r"]), alpha=float(spec["alpha"]),
                                   dropout=float(spec["dropout"]), exist_ok=True)
            self.slot_tasks[name] = spec["task"]
        saved = metadata.get("anchors", {})
        missing = [kind for kind in self.anchors if kind not in saved]
        if missing:
            raise CheckpointError(f"the checkpoint has no {' and '.join(missing)} anchors for {self.id}",
                                  hint="load it with the method settings that saved it")
        for kind in self.anchors:
            reference = self._new_anchors(kind)
            self.anchors[kind] = TaskAnchors.from_state(tensors, saved[kind], _ReferenceTower(reference),
                                                        where=f"{self.id} checkpoint")
        self.adapters.set_trainable([])


class _ReferenceTower:
    """What ``TaskAnchors.from_state`` checks stored anchors against: this run's encoder of that kind."""

    def __init__(self, anchors: Any):
        self.dim, self.source, self.fingerprint = anchors.dim, anchors.tower, anchors.fingerprint


def softmax_weights(scores: torch.Tensor, temperature: float, *, hard: bool = False) -> torch.Tensor:
    """Rows of ``softmax(scores / temperature)``, or one-hot argmax rows with ``hard``."""
    if hard:
        return torch.nn.functional.one_hot(scores.argmax(-1), scores.shape[-1]).float()
    return torch.softmax(scores.float() / float(temperature), dim=-1)
