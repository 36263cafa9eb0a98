"""The method contract: what a continual-learning method may do, as a few hooks.

The engine runs, for each task t of the sequence::

    method.begin_task(task)
    records = method.training_records(task, records)       # e.g. mix in a replay buffer
    for batch in batches(records):
        plan = method.prepare_forward(batch, ForwardContext("train"))  # e.g. per-sample routing
        outputs = model(**plan.inputs if plan and plan.inputs else batch.model_inputs())
        loss = method.loss(task, batch, outputs)             # e.g. add a regulariser
        ...optimizer step on method.trainable_parameters()...
    method.end_task(task, fit)                               # e.g. Fisher, freezing, merging
    method.prepare_inference(task)                           # e.g. choose how slots mix at test time
    for batch in test batches: method.prepare_forward(batch, ForwardContext("eval", num_beams)); generate

and saves ``method.state_dict()`` / ``method.state_metadata()`` with the adapters.
``method.inference_mix()`` says whether the answers come from a fixed sum of slots
(then ``prism ckpt export`` can merge them into the base) or depend on the input.
The engine never asks which method it runs. Methods return values; nothing
mutates a shared ``loss`` attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # keep `import prism.methods.base` light for `prism methods show`
    import torch

    from prism.adapters import AdapterSet
    from prism.backbones.base import LoadedBackbone
    from prism.benchmarks.base import TaskSpec
    from prism.benchmarks.batch import Batch
    from prism.methods.forward import ForwardContext, ForwardPlan


#: slot name -> constant weight: the model answers every input with base + Σ weight · ΔW_slot.
#: An empty mix is the base model itself.
FixedMix = dict[str, float]


class MethodParams(BaseModel):
    """Hyper-parameters of a method; subclasses add fields with published defaults.

    Each field's ``description`` is what ``prism methods show ID`` prints.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoRAParams(MethodParams):
    """The LoRA settings shared by LoRA-family methods."""

    r: int = Field(8, ge=1, description="LoRA rank (total; methods with slots split it)")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha/r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: str = Field(
        "attn_and_ffn",
        description="preset (attn, attn_and_ffn, ffn, all_linear) or a regex over module paths",
    )


@dataclass
class TaskContext:
    """Where the run is in its task sequence."""

    index: int  # position in this run's sequence (0-based)
    spec: "TaskSpec"
    sequence: list["TaskSpec"]  # every task of the run, in order
    benchmark: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_tasks(self) -> int:
        return len(self.sequence)

    @property
    def seen(self) -> list["TaskSpec"]:
        return self.sequence[: self.index + 1]


class FitHandle:
    """What a method may use at the end of a task: the task's data and the model.

    Implemented by the engine; a method calls ``batches(n)`` to iterate training
    batches of the finished task (e.g. for a Fisher estimate) and ``forward``
    to run the model on one.
    """

    model: Any
    device: Any

    def batches(self, limit: int | None = None, batch_size: int | None = None) -> Iterator["Batch"]:
        raise NotImplementedError

    def forward(self, batch: "Batch") -> Any:
        raise NotImplementedError

    def served_records(self) -> list[dict]:
        """The training records in the order the step loop served them (every rank's share,
        in global order; replayed records included), as recomputed from the task's seed."""
        raise NotImplementedError


@dataclass
class RunInfo:
    """Static facts about the run a method may need when it is built."""

    num_tasks: int
    task_names: list[str]
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class of continual-learning methods. Override only what you need."""

    id: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    #: False for methods that never train (zeroshot): the engine skips fitting.
    trains: ClassVar[bool] = True
    #: True for the multi-task upper bound: the engine trains once on the union of tasks.
    joint: ClassVar[bool] = False
    #: True when a training step may leave some trainable parameters unused (top-k routers,
    #: per-task slots switched off): DDP must then look for them (costs a graph traversal).
    unused_parameters: ClassVar[bool] = False
    #: True when the method edits gradients in ``on_gradients`` (projection, preconditioning).
    #: DeepSpeed applies its optimizer step inside the backward pass, so such a method runs on
    #: one process or DDP; ``[distributed] backend = "deepspeed"`` is refused for it.
    edits_gradients: ClassVar[bool] = False

    def __init__(self, params: MethodParams, run: RunInfo):
        self.params = params
        self.run = run
        self.adapters: "AdapterSet | None" = None
        self.backbone: "LoadedBackbone | None" = None
        #: base parameters this method trains (``train_base``), saved with every checkpoint
        self.trained_base: list[str] = []

    # -- set-up ----------------------------------------------------------------
    def attach(self, backbone: "LoadedBackbone") -> None:
        """Add this method's trainable parts (adapters, prompts, routers) to the model."""
        self.backbone = backbone

    def own_module(self, name: str, module: "torch.nn.Module") -> "torch.nn.Module":
        """Attach a router, prompt or MLP under the model (``model.prism_modules[name]``).

        The optimizer, DDP, ZeRO and step checkpoints then see its parameters, and every
        task checkpoint saves and restores it. Call it in ``attach``.
        """
        from prism.methods.owned import attach_module

        assert self.backbone is not None, "own_module is called in attach, after super().attach(backbone)"
        return attach_module(self.backbone.model, name, module)

    def train_base(self, pattern: str) -> list[str]:
        """Train the base parameters matching ``pattern`` (e.g. "multi_modal_projector": the projector,
        at ``[train] projector_lr`` when set); they are saved with every task checkpoint."""
        from prism.methods.owned import train_base

        assert self.backbone is not None, "train_base is called in attach, after super().attach(backbone)"
        names = train_base(self.backbone.model, pattern)
        self.trained_base.extend(n for n in names if n not in self.trained_base)
        return names

    # -- training ----------------------------------------------------------------
    def begin_task(self, task: TaskContext) -> None:
        """Prepare for training on ``task`` (new slots, which slots train...)."""

    def training_records(self, task: TaskContext, records: list[dict]) -> list[dict]:
        """The records to train on for this task; replay methods add stored ones."""
        return records

    def trainable_parameters(self) -> list["torch.nn.Parameter"]:
        """Parameters the optimizer updates for the current task."""
        assert self.backbone is not None
        return [p for p in self.backbone.model.parameters() if p.requires_grad]

    def prepare_forward(self, batch: "Batch", context: "ForwardContext") -> "ForwardPlan | None":
        """Called before every forward pass (contract v2): what this batch's forward needs.

        ``context.phase`` is "train" (a training step), "end_task" (a pass over the task's
        data through ``FitHandle.forward``) or "eval" (generation, ``context.num_beams`` rows
        per sample). Return a ``ForwardPlan`` with per-sample slot weights, named per-sample
        tensors, an inputs override or the routing to record; the engine repeats per-sample
        tensors for beams and installs them. The default calls the v1 hook ``before_forward``
        (``training`` True except in evaluation) and returns None.
        """
        self.before_forward(batch, training=context.phase != "eval")
        return None

    def before_forward(self, batch: "Batch", *, training: bool) -> None:
        """Contract v1: called before every forward pass (``prepare_forward`` calls it)."""

    def loss(self, task: TaskContext, batch: "Batch", outputs: Any) -> "torch.Tensor":
        """The training loss; regularisers add their terms to ``outputs.loss``."""
        return outputs.loss

    def on_gradients(self, task: TaskContext, parameters: dict[str, "torch.nn.Parameter"]) -> None:
        """After a step's gradients are complete (averaged over processes), before clipping and the
        optimizer step; called only when ``edits_gradients`` is True. ``parameters``: the trainable
        parameters by name in the model. Edit ``p.grad`` in place."""

    def after_step(self, task: TaskContext, step: int) -> None:
        """After each optimizer step (``step`` counts this task's steps from 1): EMAs, momentum, freezing."""

    def end_task(self, task: TaskContext, fit: FitHandle) -> None:
        """After training on ``task``: estimate Fisher, freeze, merge, store prototypes..."""

    def step_state(self) -> dict[str, "torch.Tensor"]:
        """What the method keeps between optimizer steps besides trainable weights (EMAs, covariance
        sketches, masks): saved in every step checkpoint, so a task resumed mid-way continues exactly."""
        return {}

    def load_step_state(self, tensors: dict[str, "torch.Tensor"]) -> None:
        """Restore what ``step_state`` returned (called when a task resumes from a step checkpoint)."""

    # -- inference ---------------------------------------------------------------
    def prepare_inference(self, learned: TaskContext) -> None:
        """Make the model ready to answer any task seen up to ``learned``."""

    def inference_mix(self) -> FixedMix | None:
        """The slots, with constant weights, that answer every input once a checkpoint is loaded.

        Return a mix only when the answers are exactly those of the base model with
        Σ weight · scaling · B A of these slots added to each adapted layer: no routing,
        per-sample weights, prompts or other trained parameters. ``prism ckpt export``
        merges that sum into the base weights (or writes it as one peft LoRA). It is
        called after ``load_state`` and the adapter weights are restored, and must not
        rely on ``prepare_inference`` having run. None (the default) means the answers
        depend on the input (a router, a task identity), so there is no single model to
        export and ``prism ckpt export`` refuses.
        """
        return None

    # -- state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, "torch.Tensor"]:
        """Tensors besides adapter weights (Fisher, anchors...) saved to prism_state.safetensors."""
        return {}

    def state_metadata(self) -> dict[str, Any]:
        """JSON-serialisable state (buffer ids, counters) saved to prism_state.json."""
        return {}

    def load_state(self, tensors: dict[str, "torch.Tensor"], metadata: dict[str, Any]) -> None:
        """Restore what ``state_dict``/``state_metadata`` returned."""

    def adapter_slots_for_checkpoint(self) -> list[str] | None:
        """Slots to save (None: all)."""
        return None
