"""zeroshot: evaluate the base model on every task with no training (the lower reference)."""

from __future__ import annotations

from prism.methods.base import FixedMix, Method, MethodParams


class ZeroShotParams(MethodParams):
    """zeroshot has no hyper-parameters."""


class ZeroShot(Method):
    id = "zeroshot"
    summary = "the base model with no training: the lower reference"
    Params = ZeroShotParams
    trains = False

    def attach(self, backbone) -> None:
        """Nothing is learned: the whole model is frozen (so the frozen-tower feature cache serves it)."""
        super().attach(backbone)
        backbone.model.requires_grad_(False)

    def inference_mix(self) -> FixedMix:
        """No adapters: the base model answers."""
        return {}
