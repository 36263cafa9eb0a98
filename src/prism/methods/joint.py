"""joint: one LoRA trained once on the union of every task's data — the multi-task upper bound.

The engine sees ``joint = True`` and, instead of learning the tasks in turn,
trains a single step on all of them and evaluates every task once: the matrix
has only its final row, and only Last/MFN is defined. With ``[train] max_steps``
(a per-task budget) the joint step gets the whole sequence's budget, T x max_steps,
so it sees as many samples as a sequential run.
"""

from __future__ import annotations

from prism.methods.ft_lora import FineTuneLoRA, FineTuneLoRAParams


class JointParams(FineTuneLoRAParams):
    """The same LoRA settings as ft_lora, so the two are compared like for like.
    Published UCIT multi-task (LLaVA-1.5-7B): Avg 72.53."""


class Joint(FineTuneLoRA):
    id = "joint"
    summary = "one LoRA trained on the union of all tasks' data: the multi-task upper bound"
    Params = JointParams
    joint = True
