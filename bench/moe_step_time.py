"""Training-step time of the mixture-of-experts methods against ft_lora at the same total rank.

Each method is attached to its own copy of the tiny LLaVA (builtin:tiny-llava) and trains
on the same encoded synthetic batches through prism's own forward path (the method's
forward plan, router context and loss), with AdamW; rounds alternate between the methods in
this one process and the best step time of each is kept. The ratio is a method's step time
÷ ft_lora's (target <= 2.0).

    python bench/moe_step_time.py                  # r 16 total, batch 16, 30 steps, 3 rounds

Every method adapts attn_and_ffn here (SAME's own default is the FFN alone), so the ratio is the
cost of the mechanism at equal adapted layers and rank.
    python bench/moe_step_time.py --rank 32 --steps 50
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

#: (label, method id, parameters beyond r / alpha / target_modules)
CONFIGS = (
    ("ft_lora", "ft_lora", {}),
    ("moelora E=2", "moelora", {"num_experts": 2}),
    ("moelora E=4", "moelora", {"num_experts": 4}),
    ("clmoe E=4", "clmoe", {"num_experts": 4}),
    ("same E=5", "same", {"num_experts": 5}),
)


def batches(data_root: Path, backbone, size: int, count: int):
    from prism.benchmarks.data import TaskDataset
    from prism.benchmarks.records import load_train_records
    from prism.benchmarks.synthetic import SyntheticBenchmark

    config = SimpleNamespace(id="synthetic", root=str(data_root), seed=0, tasks=None, max_train_samples=None,
                             max_test_samples=None, sub_dataset=False)
    bench = SyntheticBenchmark(config, data_root)
    root = bench.prepare()
    spec = bench.task_specs()[0]
    dataset = TaskDataset(load_train_records(root, spec), backbone=backbone, root=root, specs=[spec])
    out = []
    for batch in dataset.batches(size, generator=0):
        out.append(batch)
        if len(out) == count:
            return out, spec
    return out, spec


def prepared(method_id: str, params: dict, backbone, spec):
    from prism.methods.base import RunInfo, TaskContext
    from prism.plugins import PluginManager

    cls = PluginManager(autoload=False).registry("method").load(method_id)
    own = copy.copy(backbone)
    own.model = copy.deepcopy(backbone.model)
    own.extra = dict(backbone.extra)
    method = cls(cls.Params(**params), RunInfo(num_tasks=5, task_names=[spec.name], seed=0))
    method.attach(own)
    task = TaskContext(index=0, spec=spec, sequence=[spec], benchmark="synthetic")
    method.begin_task(task)
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-3)
    own.model.train()
    return method, own.model, task, optimizer


def run_steps(method, model, task, optimizer, data) -> float:
    """Seconds per optimizer step over ``data`` (one micro-batch per step)."""
    from prism.engine.forward_plan import TRAIN_STEP, model_inputs, plan_forward

    start = time.perf_counter()
    for step, batch in enumerate(data, 1):
        plan = plan_forward(method, batch, TRAIN_STEP)
        loss = method.loss(task, batch, model(**model_inputs(batch, plan)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if method.edits_gradients:
            method.on_gradients(task, {})
        optimizer.step()
        method.after_step(task, step)
    return (time.perf_counter() - start) / len(data)


def main() -> None:
    from prism.backbones.llava import LlavaBackbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16, help="total LoRA rank of every method")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = LlavaBackbone().load(SimpleNamespace(id="llava", model="builtin:tiny-llava", attn="auto",
                                                    train_precision="fp32"))
    with tempfile.TemporaryDirectory() as tmp:
        data, spec = batches(Path(tmp) / "synthetic", backbone, args.batch, args.steps)
        shared = {"r": args.rank, "alpha": 2.0 * args.rank, "target_modules": "attn_and_ffn", "dropout": 0.05}
        runs = {label: prepared(method_id, {**shared, **extra}, backbone, spec)
                for label, method_id, extra in CONFIGS}
        for method, model, task, optimizer in runs.values():  # warm-up
            run_steps(method, model, task, optimizer, data[:3])
        best = {label: float("inf") for label in runs}
        for _ in range(args.rounds):
            for label, prepared_run in runs.items():
                best[label] = min(best[label], run_steps(*prepared_run, data))
    base = best["ft_lora"]
    print(f"total rank {args.rank}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds "
          f"(torch threads {torch.get_num_threads()})")
    print(f"{'method':<14} {'ms/step':>9} {'÷ ft_lora':>10}")
    for label, seconds in best.items():
        print(f"{label:<14} {seconds * 1000:>9.1f} {seconds / base:>10.2f}")


if __name__ == "__main__":
    main()
