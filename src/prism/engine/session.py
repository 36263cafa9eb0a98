"""Build what a run needs from the resolved config: benchmark, backbone, method, layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism.benchmarks.base import Benchmark, TaskSpec
from prism.checkpoint.layout import RunLayout
from prism.methods.base import Method, RunInfo
from prism.plugins import registry


@dataclass
class RunPlan:
    """The task sequence and where its files go — no model loaded yet."""

    resolved: Any  # prism.config.ResolvedConfig
    benchmark: Benchmark
    all_tasks: list[TaskSpec]
    indices: list[int]  # benchmark indices of the run's tasks, in order
    layout: RunLayout

    @property
    def sequence(self) -> list[TaskSpec]:
        return [self.all_tasks[i] for i in self.indices]

    @property
    def config(self) -> Any:
        return self.resolved.config


def plan_run(resolved: Any) -> RunPlan:
    from prism.config import task_selection

    cfg = resolved.config
    project_dir: Path = resolved.project_dir
    benchmark_cls = registry("benchmark", project_dir).load(cfg.benchmark.id)
    benchmark = benchmark_cls(cfg.benchmark, project_dir)
    tasks = benchmark.task_specs()
    indices = task_selection(cfg.benchmark.tasks, [t.name for t in tasks])
    layout = RunLayout(resolved.output_dir, cfg.benchmark.id, cfg.method.id, cfg.backbone.id)
    return RunPlan(resolved=resolved, benchmark=benchmark, all_tasks=tasks, indices=indices, layout=layout)


def build_method(plan: RunPlan) -> Method:
    cfg = plan.config
    method_cls = registry("method", plan.resolved.project_dir).load(cfg.method.id)
    run = RunInfo(num_tasks=len(plan.indices), task_names=[t.name for t in plan.sequence],
                  seed=cfg.project.seed)
    return method_cls(plan.resolved.method_params, run)


def load_backbone(plan: RunPlan, device: Any = "cpu") -> Any:
    cfg = plan.config
    backbone_cfg = cfg.backbone
    model = Path(backbone_cfg.model).expanduser()
    local = plan.resolved.project_dir / model
    if not backbone_cfg.model.startswith("builtin:") and not model.is_absolute() and local.exists():
        backbone_cfg = backbone_cfg.model_copy(update={"model": str(local)})  # relative to prism.toml
    backbone_cls = registry("backbone", plan.resolved.project_dir).load(cfg.backbone.id)
    return backbone_cls().load(backbone_cfg, device=device)


def quiet_libraries() -> None:
    """Loading prints progress bars and deprecation warnings; a CLI should not."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers always present in a run
        pass
