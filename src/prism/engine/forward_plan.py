"""Applying a method's ForwardPlan: the one place the engine prepares a forward pass.

Used by the training step (plain, DDP and DeepSpeed), a method's end-of-task pass
and generation, so every phase treats per-sample routing and inputs overrides alike.
"""

from __future__ import annotations

from typing import Any

import torch

from prism.methods.forward import ForwardContext, ForwardPlan

TRAIN_STEP = ForwardContext("train")
END_TASK_PASS = ForwardContext("end_task")


def plan_forward(method: Any, batch: Any, context: ForwardContext) -> ForwardPlan | None:
    """Ask the method for this batch's plan and install it; returns the plan (None: nothing to do).

    Methods of contract v1 (only ``before_forward(batch, training=...)``) are called as before:
    ``training`` is True for training steps and the end-of-task pass, False for evaluation.
    """
    prepare = getattr(method, "prepare_forward", None)
    if prepare is None:
        method.before_forward(batch, training=context.phase != "eval")
        return None
    plan = prepare(batch, context)
    if plan is not None:
        install(method, batch, plan, context)
    return plan


def install(method: Any, batch: Any, plan: ForwardPlan, context: ForwardContext) -> None:
    """Per-sample slot weights onto the method's adapters, repeated for the context's beams, and a
    fresh router context (``prism.adapters.router_context``) holding the plan's per-sample tensors."""
    adapters = getattr(method, "adapters", None)
    if adapters is None:
        if plan.slot_weights or plan.sample:
            raise ValueError(f"method {getattr(method, 'id', method)!r} returned per-sample tensors "
                             "but has no adapters")
        return
    for entry in plan.slot_weights:
        adapters.set_sample_weights(repeat_for_beams(entry.weights, context.num_beams), layers=entry.layers)
    from prism.adapters.router_context import open_router_context

    inputs = model_inputs(batch, plan)
    mask = inputs.get("attention_mask")
    open_router_context(adapters.model, sample_tensors(plan, context),
                        attention_mask=None if mask is None else repeat_for_beams(mask, context.num_beams))


def repeat_for_beams(tensor: torch.Tensor, num_beams: int) -> torch.Tensor:
    """Each sample's row ``num_beams`` times in a row: the order ``generate`` expands a batch in."""
    return tensor if num_beams == 1 else tensor.repeat_interleave(num_beams, dim=0)


def sample_tensors(plan: ForwardPlan | None, context: ForwardContext) -> dict[str, torch.Tensor]:
    """The plan's named per-sample tensors, repeated for beams (what routers read)."""
    if plan is None:
        return {}
    return {name: repeat_for_beams(t, context.num_beams) for name, t in plan.sample.items()}


def model_inputs(batch: Any, plan: ForwardPlan | None) -> dict[str, torch.Tensor]:
    """The forward's keyword arguments: the plan's override, else the batch's own."""
    if plan is not None and plan.inputs is not None:
        return dict(plan.inputs)
    return batch.model_inputs()


def insert_prefix(embeds: torch.Tensor, attention_mask: torch.Tensor, prefix: torch.Tensor, *,
                  labels: torch.Tensor | None = None, after_bos: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Insert ``prefix`` (``[batch, P, hidden]`` or ``[P, hidden]``) after each row's first real token.

    Rows may be left-padded (generation) or right-padded (training): the insertion point is
    each row's first non-padding position (+1 for BOS when ``after_bos``), so the prompt
    tokens sit right after BOS in every row. The new positions are attended to and, in
    ``labels``, ignored (-100).
    """
    batch, length, hidden = embeds.shape
    if prefix.ndim == 2:
        prefix = prefix.unsqueeze(0).expand(batch, -1, -1)
    if prefix.shape[0] != batch or prefix.shape[2] != hidden:
        raise ValueError(f"prefix of shape {tuple(prefix.shape)} does not fit embeddings {tuple(embeds.shape)}")
    size = prefix.shape[1]
    mask = attention_mask.bool()
    first = torch.where(mask.any(1), mask.float().argmax(1), torch.zeros(batch, dtype=torch.long,
                                                                          device=mask.device))
    at = first + int(after_bos)
    out_embeds = embeds.new_zeros(batch, length + size, hidden)
    out_mask = attention_mask.new_zeros(batch, length + size)
    out_labels = None if labels is None else labels.new_full((batch, length + size), -100)
    for row in range(batch):
        cut = int(at[row])
        out_embeds[row] = torch.cat([embeds[row, :cut], prefix[row].to(embeds.dtype), embeds[row, cut:]])
        out_mask[row] = torch.cat([attention_mask[row, :cut], attention_mask.new_ones(size),
                                   attention_mask[row, cut:]])
        if labels is not None:
            out_labels[row] = torch.cat([labels[row, :cut], labels.new_full((size,), -100), labels[row, cut:]])
    return out_embeds, out_mask, out_labels
