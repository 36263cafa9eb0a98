"""A plain-LoRA checkpoint written by prism loads with stock peft and gives the same logits."""

from __future__ import annotations

import torch

from prism.engine.loop import train
from prism.engine.task_checkpoints import restore_checkpoint
from prism.engine.session import build_method, load_backbone, plan_run

from .conftest import resolve


def test_stock_peft_loads_prism_checkpoint(project):
    from peft import PeftModel
    from transformers import LlavaForConditionalGeneration

    resolved = resolve(project, "benchmark.tasks='0'", "train.max_steps=10")
    outcome = train(resolved)
    ckpt = outcome.layout.checkpoint(0)

    plan = plan_run(resolved)
    backbone = load_backbone(plan)
    method = build_method(plan)
    method.attach(backbone)
    restore_checkpoint(method, ckpt)
    backbone.model.eval()

    from prism.benchmarks.data import TaskDataset, load_test_records

    root = plan.benchmark.prepare()
    spec = plan.sequence[0]
    records = load_test_records(root, spec, max_samples=4)
    batch = next(TaskDataset(records, backbone=backbone, root=root, specs=[spec], prompts=True)
                 .batches(4, shuffle=False))
    with torch.no_grad():
        ours = backbone.model(**batch.model_inputs()).logits

    base = LlavaForConditionalGeneration.from_pretrained(backbone.resolved_path)
    peft_model = PeftModel.from_pretrained(base, str(ckpt)).eval()
    with torch.no_grad():
        theirs = peft_model(**batch.model_inputs()).logits
    delta = (ours - theirs).abs().max().item()
    assert delta < 1e-4, delta
    # and the adapter really changed the model
    with torch.no_grad(), peft_model.disable_adapter():
        plain = peft_model(**batch.model_inputs()).logits
    assert (plain - theirs).abs().max().item() > 1e-3
