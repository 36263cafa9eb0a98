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
