"""Method-owned modules and trained base weights: seen by the optimizer, saved and restored with a checkpoint."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from prism.methods.base import Method, RunInfo


class _Owner(Method):
    id = "owner"

    def attach(self, backbone):
        from prism.adapters.inject import inject_adapters

        super().attach(backbone)
        backbone.model.requires_grad_(False)
        self.adapters = inject_adapters(backbone.model, backbone.target_regex("attn"))
        self.adapters.add_slot("default", r=2, alpha=4.0, seed=0)
        self.router = self.own_module("router", torch.nn.Linear(4, 2))
        self.train_base("multi_modal_projector")


def _method(seed):
    from prism.backbones.llava import LlavaBackbone

    torch.manual_seed(seed)
    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    method = _Owner(None, RunInfo(1, ["colour"]))
    method.attach(backbone)
    return method


def test_the_optimizer_sees_owned_modules_and_the_projector_at_its_own_lr():
    from prism.engine.fit import TaskFitter

    method = _method(0)
    model = method.backbone.model
    fitter = TaskFitter(model=model, method=method, dataset=None, seed=0, accelerator=SimpleNamespace(device="cpu"),
                        train_cfg=SimpleNamespace(projector_lr=2e-5))
    named = fitter._trainable_named()
    assert {"prism_modules.router.weight", "prism_modules.router.bias"} <= set(named)
    projector = [n for n in named if "multi_modal_projector" in n]
    assert projector and sorted(projector) == sorted(method.trained_base)
    groups = fitter._param_groups(list(named.values()))
    assert groups[1]["lr"] == 2e-5 and len(groups[1]["params"]) == len(projector)


def test_owned_parts_survive_a_checkpoint_round_trip(tmp_path):
    from prism.errors import CheckpointError
    from prism.methods.owned import load_owned_state, owned_state

    saved_by = _method(0)
    with torch.no_grad():
        saved_by.router.weight.fill_(0.5)
        for name, param in saved_by.backbone.model.named_parameters():
            if name in saved_by.trained_base:
                param.add_(1.0)
    state = {k: v.detach().clone() for k, v in owned_state(saved_by.backbone.model, saved_by.trained_base).items()}
    fresh = _method(1)
    rest = load_owned_state(fresh.backbone.model, fresh.trained_base, {**state, "fisher.x": torch.ones(1)})
    assert set(rest) == {"fisher.x"}
    assert torch.equal(fresh.router.weight, saved_by.router.weight)
    live = dict(fresh.backbone.model.named_parameters())
    before = dict(saved_by.backbone.model.named_parameters())
    assert all(torch.equal(live[n], before[n]) for n in fresh.trained_base)
    with pytest.raises(CheckpointError, match="did not create"):
        load_owned_state(fresh.backbone.model, fresh.trained_base, {"prism.module.prompts.weight": torch.ones(1)})


def test_gradient_hooks_run_between_backward_and_step_and_after_each_step(project):
    """A method that zeroes one slot's gradient keeps it untouched; after_step counts the steps."""
    from prism.engine.loop import train
    from prism.methods.ft_lora import FineTuneLoRA
    from tests.engine.conftest import resolve

    calls = {"gradients": 0, "steps": []}
    frozen = {}

    class Projecting(FineTuneLoRA):
        edits_gradients = True

        def on_gradients(self, task, parameters):
            calls["gradients"] += 1
            for name, param in parameters.items():
                if ".lora_B." in name and "q_proj" in name and param.grad is not None:
                    frozen.setdefault(name, param.detach().clone())
                    param.grad.zero_()

        def after_step(self, task, step):
            calls["steps"].append(step)

    import prism.engine.loop as loop

    original = loop.build_method

    def build(plan):
        method = original(plan)
        method.__class__ = Projecting
        return method

    loop.build_method = build
    try:
        outcome = train(resolve(project, "benchmark.tasks='0'", "train.max_steps=3", "train.eval_after_each_task=false",
                                "train.weight_decay=0.0"))
    finally:
        loop.build_method = original
    assert outcome.trained == ["colour"] and calls["gradients"] == 3 and calls["steps"] == [1, 2, 3]
    from safetensors.torch import load_file

    saved = load_file(str(outcome.layout.checkpoint(0) / "adapter_model.safetensors"))
    q_b = [k for k in saved if "q_proj" in k and "lora_B" in k]
    assert q_b and all(float(saved[k].abs().max()) == 0.0 for k in q_b)  # B starts at zero and never moved
    assert any(float(saved[k].abs().max()) > 0 for k in saved if "v_proj" in k and "lora_B" in k)


def test_deepspeed_is_refused_for_a_method_that_edits_gradients(project):
    from prism.config import load_config
    from prism.config.run_checks import validate_run
    from prism.errors import ConfigError
    from prism.methods.ft_lora import FineTuneLoRA

    resolved = load_config(project / "prism.toml", cwd=project, env={}, sets=["distributed.backend='deepspeed'"])
    validate_run(resolved)  # ft_lora itself is fine
    resolved.method_class = type("Projecting", (FineTuneLoRA,), {"edits_gradients": True})
    with pytest.raises(ConfigError, match="edits gradients"):
        validate_run(resolved)
