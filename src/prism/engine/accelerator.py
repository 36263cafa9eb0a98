"""What a run trains on: accelerate's Accelerator (plain/DDP or DeepSpeed), its trackers, and the
environment facts recorded in run.json."""

from __future__ import annotations

import platform
from typing import Any

from prism import __version__
from prism.checkpoint.layout import RunLayout
from prism.errors import ConfigError


def make_accelerator(cfg: Any, layout: RunLayout, *, unused_parameters: bool = False, deepspeed: Any = None) -> Any:
    """accelerate's Accelerator for the run: plain/DDP, or with DeepSpeed (``deepspeed``: DeepSpeedSettings)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from prism.backbones.precision import compute_device, mixed_precision

    mixed = mixed_precision(cfg.backbone.train_precision, compute_device())
    trackers = report_to(cfg.train.report_to)
    if deepspeed is not None:
        from prism.engine.zero import make_accelerator as deepspeed_accelerator

        return deepspeed_accelerator(deepspeed, mixed_precision=mixed, log_with=trackers or None,
                                     project_dir=str(layout.results_dir))
    # methods with routers or per-task slots may leave trainable parameters out of a step
    ddp = DistributedDataParallelKwargs(find_unused_parameters=unused_parameters)
    return Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available(), log_with=trackers or None,
                       project_dir=str(layout.results_dir), kwargs_handlers=[ddp])


def start_trackers(accelerator: Any, cfg: Any) -> None:
    """Open the trackers' logs in the results folder (after ``--restart`` cleared it, not before)."""
    if cfg.train.report_to:
        accelerator.init_trackers(cfg.project.name, config={"method": cfg.method.id, "benchmark": cfg.benchmark.id,
                                                            "seed": cfg.project.seed})


def report_to(names: list[str]) -> list[str]:
    """``[train] report_to`` checked (``prism.config.run_checks``): known trackers whose package is installed."""
    from prism.config.run_checks import tracker_problems

    problems = tracker_problems(names)
    if problems:
        raise ConfigError("[train] report_to: " + "; ".join(problems))
    return list(names)


def deepspeed_settings(resolved: Any) -> Any:
    """The run's DeepSpeed config (``[distributed] backend = "deepspeed"``), else None."""
    distributed = resolved.config.distributed
    if distributed.backend != "deepspeed":
        return None
    from prism.engine.deepspeed_config import load_deepspeed_config

    return load_deepspeed_config(distributed, resolved.project_dir, resolved.sources)


def deepspeed_run(cfg: Any, layout: RunLayout, accelerator: Any, settings: Any) -> Any:
    """Per-task engine configs, and under ZeRO-3 full weights between fits (``prism.engine.zero``)."""
    from prism.backbones.precision import compute_device, mixed_precision
    from prism.engine.zero import RECORD_FILE, DeepSpeedRun

    precision = mixed_precision(cfg.backbone.train_precision, compute_device())
    # the effective config of the task being trained goes next to launch.json (rank 0 writes it)
    return DeepSpeedRun(settings, accelerator, precision=precision, record_path=layout.results_dir / RECORD_FILE)


def environment_facts(world_size: int = 1) -> dict[str, Any]:
    """Library versions and devices, recorded in run.json."""
    import torch
    import transformers

    facts = {
        "prism": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "platform": platform.platform(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cuda_devices": torch.cuda.device_count(), "world_size": world_size,
    }
    try:
        import accelerate
        import peft

        facts.update(accelerate=accelerate.__version__, peft=peft.__version__)
    except ImportError:
        pass
    return facts
