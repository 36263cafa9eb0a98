"""ft_lora: one LoRA adapter trained on task 0 and continued on every later task.

Nothing counters forgetting: this is the baseline every method is compared with.
"""

from __future__ import annotations

from pydantic import Field

from prism.methods.base import FixedMix, LoRAParams, Method, TaskContext

SLOT = "default"  # peft's adapter name, so the checkpoint is a stock peft LoRA


class FineTuneLoRAParams(LoRAParams):
    """Published settings: PRISM r/alpha 48/96 (UCIT), 64/128 (CoIN), 80/160 (TriGap) on
    attention; MCITlib r=16, alpha=32. The default here is MCITlib's."""

    r: int = Field(16, ge=1, description="LoRA rank (PRISM: 48 UCIT, 64 CoIN, 80 TriGap; MCITlib: 16)")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; update scaled by alpha/r (PRISM: 2r)")
    target_modules: str = Field(
        "attn", description="preset (attn, attn_and_ffn, ffn, all_linear) or regex over module paths"
    )


class FineTuneLoRA(Method):
    id = "ft_lora"
    summary = "one LoRA trained on each task in turn, nothing against forgetting"
    Params = FineTuneLoRAParams

    def attach(self, backbone) -> None:
        from prism.adapters import inject_adapters

        super().attach(backbone)
        params = self.params
        self.adapters = inject_adapters(backbone.model, backbone.target_regex(params.target_modules))
        self.adapters.add_slot(SLOT, r=params.r, alpha=params.alpha, dropout=params.dropout,
                               seed=self.run.seed)
        self.adapters.set_trainable([SLOT])
        self.adapters.activate([SLOT])

    def begin_task(self, task: TaskContext) -> None:
        assert self.adapters is not None
        self.adapters.set_trainable([SLOT])
        self.adapters.activate([SLOT])

    def inference_mix(self) -> FixedMix:
        """Every input is answered by the one adapter (also replay_lora, ewc, joint)."""
        return {SLOT: 1.0}
