"""What a method tells the engine before a forward pass (method contract v2).

``Method.prepare_forward(batch, context)`` returns a ``ForwardPlan`` (or None). The
method says what the forward needs for *this batch's samples*; the engine applies it
(``prism.engine.forward_plan``): it repeats per-sample tensors for beam search (each
sample becomes ``num_beams`` consecutive rows, as ``generate`` expands its inputs),
installs slot weights on the adapters, honours an inputs override in training and in
``generate``, and records the routing of every prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

if TYPE_CHECKING:
    import torch

Phase = Literal["train", "end_task", "eval"]
PHASES: tuple[str, ...] = ("train", "end_task", "eval")
#: prediction metadata the engine writes itself (a plan's ``describe_samples`` adds other keys)
RESERVED_METADATA: tuple[str, ...] = ("task", "image", "routing")


@dataclass(frozen=True)
class ForwardContext:
    """Why the model runs: a training step, a method's end-of-task pass, or evaluation.

    ``num_beams``: how many rows each sample becomes in the forward (beam search).
    ``oracle_task``: None unless the user asked for an oracle (``[infer] task_oracle``).
    """

    phase: Phase
    num_beams: int = 1
    #: the samples' true task, given only at evaluation with ``[infer] task_oracle = true``
    oracle_task: str | None = None

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if int(self.num_beams) != self.num_beams or self.num_beams < 1:
            raise ValueError(f"num_beams must be a positive integer, got {self.num_beams!r}")

    @property
    def training(self) -> bool:
        return self.phase == "train"


@dataclass
class SlotWeights:
    """Per-sample weights ``[batch, n_active]`` over the active slots of the chosen layers.

    ``layers``: an ``AdapterSet.select`` filter (None: every adapted layer).
    """

    weights: "torch.Tensor"
    layers: Any = None


@dataclass
class ForwardPlan:
    """A method's per-batch instructions; every tensor's first dimension is the batch.

    ``slot_weights``: per-sample slot weights for some layers (repeated for beams by the engine).
    ``sample``: named per-sample tensors a method's routers read (repeated for beams too).
    ``inputs``: replaces ``batch.model_inputs()`` (e.g. ``inputs_embeds`` with prompts inserted,
    and the matching ``attention_mask`` / ``labels``); not repeated: ``generate`` expands it.
    ``routing`` ``[batch, len(routing_slots)]``: the weight each sample gave each task slot,
    recorded with its prediction (``metadata.routing``); ``routing_slots`` names the columns by
    the task each slot belongs to, so evaluation can tell whether the router picked the
    sample's own task.
    ``describe_samples``: called once the forward (the whole ``generate``) has run; per sample, more
    facts for its prediction's metadata, e.g. which experts a router chose at the prefill (known only
    after the forward). Its keys may not replace the engine's own (``RESERVED_METADATA``).
    """

    slot_weights: list[SlotWeights] = field(default_factory=list)
    sample: dict[str, "torch.Tensor"] = field(default_factory=dict)
    inputs: dict[str, "torch.Tensor"] | None = None
    routing: "torch.Tensor | None" = None
    routing_slots: tuple[str, ...] = ()
    describe_samples: Callable[[], list[dict[str, Any]]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.routing is not None:
            if self.routing.ndim != 2 or self.routing.shape[1] != len(self.routing_slots):
                raise ValueError(f"routing has shape {tuple(self.routing.shape)}; expected "
                                 f"[batch, {len(self.routing_slots)}] (one column per routing_slots entry)")

    def sample_details(self, count: int) -> list[dict[str, Any]] | None:
        """``describe_samples()``, checked: one dict per sample, none of the engine's own keys."""
        if self.describe_samples is None:
            return None
        rows = list(self.describe_samples())
        if len(rows) != count:
            raise ValueError(f"describe_samples gave {len(rows)} rows for {count} samples")
        clash = sorted({key for row in rows for key in row} & set(RESERVED_METADATA))
        if clash:
            raise ValueError(f"describe_samples may not set the prediction metadata's own keys {clash}")
        return rows

    def routing_rows(self) -> list[dict[str, float]] | None:
        """Per sample, task name -> weight (what a prediction line records)."""
        if self.routing is None:
            return None
        rows = self.routing.detach().float().cpu().tolist()
        return [{name: round(float(w), 6) for name, w in zip(self.routing_slots, row)} for row in rows]
