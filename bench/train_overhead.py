"""prism's step loop against a minimal hand-written transformers + peft LoRA loop.

Both train the same tiny LLaVA (builtin:tiny-llava) on the same encoded synthetic
task with the same hyper-parameters (LoRA r 8 / alpha 16 / dropout 0.05 on
attn_and_ffn, AdamW lr 2e-3, cosine schedule with 3 % warm-up, clipping at 1.0,
batch 16). The two are run alternately, ``--rounds`` times each, in this one
process, and the best samples/s of each is compared. prism's figure includes
everything its fit() does per task (accelerate preparation, the method hooks,
metrics.jsonl, a step checkpoint every ``--save-every`` steps).

    python bench/train_overhead.py                # prints samples/s of both and the ratio
    python bench/train_overhead.py --steps 200 --rounds 3

Target: prism >= 0.95 x the minimal loop.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

MICRO = 16
LR = 2e-3


def load_everything(data_root: Path):
    from prism.backbones.llava import LlavaBackbone
    from prism.benchmarks.data import TaskDataset, load_train_records
    from prism.benchmarks.synthetic import SyntheticBenchmark

    config = SimpleNamespace(id="synthetic", root=str(data_root), seed=0, tasks=None, max_train_samples=None,
                             max_test_samples=None, sub_dataset=False)
    bench = SyntheticBenchmark(config, data_root)
    root = bench.prepare()
    spec = bench.task_specs()[0]
    backbone = LlavaBackbone().load(SimpleNamespace(id="llava", model="builtin:tiny-llava", attn="auto",
                                                    train_precision="fp32"))
    records = load_train_records(root, spec)
    dataset = TaskDataset(records, backbone=backbone, root=root, specs=[spec])
    return backbone, dataset, spec


def minimal_loop(backbone, dataset, steps: int) -> float:
    """What a researcher would write by hand: peft LoRA, AdamW, cosine schedule, clipping."""
    from peft import LoraConfig, get_peft_model
    from transformers import get_scheduler

    from prism.backbones.base import TARGET_PRESETS

    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(backbone.model), LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGET_PRESETS["attn_and_ffn"]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=round(0.03 * steps),
                              num_training_steps=steps)
    generator = torch.Generator().manual_seed(0)
    model.train()
    started = time.perf_counter()
    done = 0
    while done < steps:
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for start in range(0, len(order) - MICRO + 1, MICRO):
            if done == steps:
                break
            batch = dataset.batch(order[start:start + MICRO])
            optimizer.zero_grad(set_to_none=True)
            loss = model(**batch.model_inputs()).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            done += 1
    return steps * MICRO / (time.perf_counter() - started)


def prism_loop(backbone, dataset, spec, steps: int, save_every: int, out: Path) -> float:
    """prism's TaskFitter with the ft_lora method on a fresh copy of the same model."""
    from accelerate import Accelerator

    from prism.engine.fit import TaskFitter
    from prism.engine.step_checkpoint import StepCheckpointer
    from prism.methods.base import RunInfo, TaskContext
    from prism.methods.ft_lora import FineTuneLoRA, FineTuneLoRAParams

    torch.manual_seed(0)
    fresh = copy.copy(backbone)
    fresh.model = copy.deepcopy(backbone.model)
    method = FineTuneLoRA(FineTuneLoRAParams(r=8, alpha=16, dropout=0.05, target_modules="attn_and_ffn"),
                          RunInfo(num_tasks=1, task_names=[spec.name]))
    method.attach(fresh)
    task = TaskContext(index=0, spec=spec, sequence=[spec], benchmark="synthetic")
    method.begin_task(task)
    cfg = SimpleNamespace(lr=LR, epochs=1.0, max_steps=steps, global_batch_size=MICRO, micro_batch_size=None,
                          lr_scheduler="cosine", warmup_ratio=0.03, weight_decay=0.0, max_grad_norm=1.0,
                          projector_lr=None, gradient_checkpointing=False, log_every=1)
    fitter = TaskFitter(model=fresh.model, method=method, dataset=dataset, train_cfg=cfg, seed=0,
                        accelerator=Accelerator(cpu=True), log_path=out / "metrics.jsonl")
    checkpointer = StepCheckpointer(folder=out / "steps" / "Task0", every=save_every)
    started = time.perf_counter()
    result = fitter.fit(task, checkpointer=checkpointer)
    return result.samples / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each loop (alternating)")
    parser.add_argument("--save-every", type=int, default=100, help="prism's step-checkpoint interval")
    args = parser.parse_args()

    from prism.engine.session import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        backbone, dataset, spec = load_everything(Path(tmp) / "data")
        minimal, ours = [], []
        for round_ in range(args.rounds):
            minimal.append(minimal_loop(backbone, dataset, args.steps))
            ours.append(prism_loop(backbone, dataset, spec, args.steps, args.save_every, Path(tmp) / f"run{round_}"))
            print(f"round {round_ + 1}: minimal {minimal[-1]:.1f} samples/s, prism {ours[-1]:.1f} samples/s")
    best_minimal, best_prism = max(minimal), max(ours)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x batch {MICRO}")
    print(f"minimal loop: {best_minimal:.1f} samples/s (best of {args.rounds})")
    print(f"prism loop:   {best_prism:.1f} samples/s (best of {args.rounds})")
    print(f"ratio prism/minimal: {best_prism / best_minimal:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
