"""zeroshot: evaluate the base model on every task with no training (the lower reference)."""

from __future__ import annotations

from prism.methods.base import Method, MethodParams


class ZeroShotParams(MethodParams):
    """zeroshot has no hyper-parameters."""


class ZeroShot(Method):
    id = "zeroshot"
    summary = "the base model with no training: the lower reference"
    Params = ZeroShotParams
    trains = False
