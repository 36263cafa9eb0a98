"""DeepSpeed ZeRO-2/3 under prism's own step loop, through accelerate's DeepSpeed integration.

What changes compared with DDP, and why:

- **Set-up.** ``Accelerator(deepspeed_plugin=...)``. On a CPU machine the process group is made
  first by ``PartialState(cpu=True)`` (gloo, the world size torchrun set), as HF Trainer does for
  ``use_cpu``: accelerate's own ``cpu=True`` would switch DeepSpeed off. transformers' global
  "ZeRO-3 is on" flag is cleared again, so loading the backbone stays plain (no ``zero.Init``) and
  ``generate`` on rank 0 does not wait for the other ranks (``synced_gpus``).
- **The step.** DeepSpeed gets a module that computes the method's loss (``LossModule``):
  ``before_forward``, the model and ``method.loss`` all run inside the engine's forward, so under
  ZeRO-3 a regulariser that reads adapter weights (EWC, O-LoRA) sees them gathered, forward and
  backward. ``accelerator.backward`` drives the engine: prism marks the last micro-batch of its
  step as the accumulation boundary and its token weights already make the step's gradient the
  global-batch mean, so DeepSpeed must not divide by the accumulation steps again
  (``scale_wrt_gas=False``); it averages over ranks like DDP. Clipping happens once, in the engine
  (``gradient_clipping`` = ``[train] max_grad_norm``); prism's AdamW is the engine's optimizer and
  prism's LR schedule sets its learning rate.
- **One engine per task** (the trainable parameters and the optimizer change per task):
  ``accelerator.free_memory()`` destroys it (its hooks) when the fit ends.
- **ZeRO-3 partitions every parameter** it was handed, the frozen base included. Between two fits
  prism reads and writes full weights (a method's ``end_task``, saving adapters and method state on
  rank 0, evaluation on rank 0, the next ``begin_task``): ``FullParameters`` gathers them on every
  rank when a fit ends and writes rank 0's values back into the shards when the next fit starts.
  The model must therefore fit on one device outside the training steps.
- **Step checkpoints** (prism's own format, no pickles): the trainable weights as full fp32
  tensors (DeepSpeed's ``safe_get_full_fp32_param``) and the optimizer as each rank's own
  partition of AdamW's state, gathered to rank 0. Such a checkpoint resumes under DeepSpeed with
  the same ZeRO stage and number of processes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from prism.engine.deepspeed_config import DeepSpeedSettings, recordable, task_config, text_hidden_size
from prism.errors import CheckpointError

RECORD_FILE = "deepspeed_config.json"


def make_accelerator(settings: DeepSpeedSettings, *, mixed_precision: str, **kwargs: Any) -> Any:
    """An Accelerator whose prepare() builds a DeepSpeed engine (CPU: over gloo)."""
    import os

    from accelerate import Accelerator, PartialState
    from accelerate.utils import DeepSpeedPlugin

    if "LOCAL_RANK" not in os.environ and "RANK" not in os.environ:
        # no launcher (a notebook, a test): one process, as torchrun would describe it
        from prism.engine.launch import free_port

        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port()))):
            os.environ.setdefault(key, value)
    if not torch.cuda.is_available():
        PartialState(cpu=True)
    # zero3_init_flag=False: the backbone loads in full, the engine partitions it at prepare()
    plugin = DeepSpeedPlugin(hf_ds_config=copy.deepcopy(settings.config), zero3_init_flag=False)
    accelerator = Accelerator(mixed_precision=mixed_precision, deepspeed_plugin=plugin, **kwargs)
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    return accelerator


def is_partitioned(param: torch.Tensor) -> bool:
    """A ZeRO-3 parameter (its data may be this rank's shard only)."""
    return hasattr(param, "ds_id")


class FullParameters:
    """ZeRO-3: the model's parameters held gathered (full, on every rank) between two fits."""

    def __init__(self) -> None:
        self._context: Any = None

    def gather(self, model: torch.nn.Module) -> None:
        """Every rank: all-gather the partitioned parameters and keep them full."""
        import deepspeed

        params = [p for p in model.parameters() if is_partitioned(p)]
        if not params or self._context is not None:
            return
        # modifier_rank=0: when released, rank 0's values (identical on every rank) go back to the shards
        self._context = deepspeed.zero.GatheredParameters(params, modifier_rank=0)
        self._context.__enter__()

    def release(self) -> None:
        """Every rank: write the (possibly changed) full values back into the shards."""
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)

    def forget(self) -> None:
        self._context = None


class DeepSpeedRun:
    """The DeepSpeed side of one `prism train`: per-task config, engine life cycle, ZeRO-3 gathering."""

    def __init__(self, settings: DeepSpeedSettings, accelerator: Any, *, precision: str,
                 record_path: Path | None = None):
        self.settings = settings
        self.accelerator = accelerator
        self.precision = precision
        self.record_path = record_path
        self.full = FullParameters()

    @property
    def zero_stage(self) -> int:
        return self.settings.zero_stage

    def engine_info(self) -> dict[str, Any]:
        """Who wrote a step checkpoint's optimizer state (it resumes only under the same)."""
        return {"backend": "deepspeed", "zero_stage": self.zero_stage,
                "processes": self.accelerator.num_processes}

    # -- one fit ---------------------------------------------------------------------------
    def configure(self, model: Any, *, micro_batch: int, accumulation: int, max_grad_norm: float | None
                  ) -> dict[str, Any]:
        """This task's config, put into accelerate's plugin before prepare; rank 0 records it."""
        from prism.checkpoint.store import write_json_atomic

        config = task_config(self.settings.config, micro_batch=micro_batch, accumulation=accumulation,
                             processes=self.accelerator.num_processes, max_grad_norm=max_grad_norm,
                             precision=self.precision, hidden_size=text_hidden_size(model))
        live = self.accelerator.state.deepspeed_plugin.deepspeed_config
        live.clear()
        live.update(config)
        if self.accelerator.is_main_process and self.record_path is not None:
            write_json_atomic(self.record_path, recordable(config))
        return config

    def loss_module(self, model: Any, method: Any, task: Any) -> Any:
        from prism.engine.step_backend import LossModule

        module = LossModule(model, method, task)
        if self.zero_stage == 3:  # what a method's hooks may read besides the model's own forward
            import deepspeed

            adapters = getattr(method, "adapters", None)
            external = adapters.parameters(None, routers=True) if adapters is not None else []
            known = {id(p) for p in external}
            external += [p for p in method.trainable_parameters() if id(p) not in known]
            for param in external:
                deepspeed.zero.register_external_parameter(module, param)
        return module

    def before_prepare(self) -> None:
        self.full.release()

    def after_fit(self, model: torch.nn.Module) -> None:
        """The task's engine is done: gather (ZeRO-3) and destroy it, so the model is plain again."""
        if self.zero_stage == 3:
            self.full.gather(model)
        self.accelerator.free_memory()

    def close(self) -> None:
        """The run is over: the model stays full (no need to write it back into shards)."""
        self.full.forget()

    # -- step checkpoints (collective: every rank calls these) ------------------------------
    def full_trainable(self, named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        """The trainable weights in full, from the engine's fp32 master copies."""
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for name, param in named.items():
            value = safe_get_full_fp32_param(param)
            out[name] = (value if value is not None else param.detach()).detach().to("cpu", copy=True)
        return out

    def optimizer_shards(self, optimizer: Any) -> dict[str, Any]:
        """Every rank's partition of AdamW's state, in the order of the engine's fp32 partitions.

        ``optimizer`` is what accelerate's prepare returned; prism's AdamW inside it steps the
        flat fp32 partitions the ZeRO optimizer keeps (the same tensors DeepSpeed's own
        checkpoints store).
        """
        from accelerate.utils import gather_object

        zero = _zero_optimizer(optimizer)
        base = zero.optimizer
        local = {"state": {i: _to_cpu(dict(base.state.get(part, {}))) for i, part in enumerate(_fp32_partitions(zero))},
                 "param_groups": [{**{k: v for k, v in group.items() if k != "params"}, "params": []}
                                  for group in base.param_groups]}
        shards = gather_object([local]) if self.accelerator.num_processes > 1 else [local]
        return {"zero_shards": shards}

    def restore(self, named: dict[str, torch.nn.Parameter], trainable: dict[str, torch.Tensor],
                optimizer: Any, saved: dict[str, Any]) -> None:
        """After prepare: the engine's fp32 masters and this rank's partition of AdamW's state."""
        from deepspeed.utils import safe_set_full_fp32_param

        shards = saved.get("zero_shards")
        if not shards or len(shards) != self.accelerator.num_processes:
            raise CheckpointError(
                f"the step checkpoint holds {len(shards or [])} optimizer partitions, this run has "
                f"{self.accelerator.num_processes} processes",
                hint="resume with the same number of processes, or pass --restart")
        zero = _zero_optimizer(optimizer)
        base, parts = zero.optimizer, _fp32_partitions(zero)
        shard = shards[self.accelerator.process_index]
        _check_shard(shard, parts, base)
        for name, param in named.items():
            safe_set_full_fp32_param(param, trainable[name].to(self.accelerator.device, torch.float32))
        for index, part in enumerate(parts):
            base.state[part] = {key: (value.to(part.device, part.dtype) if torch.is_tensor(value)
                                      and value.numel() == part.numel() else value)
                                for key, value in shard["state"].get(index, {}).items()}
        for group, saved_group in zip(base.param_groups, shard["param_groups"]):
            group.update({k: v for k, v in saved_group.items() if k != "params"})


def _zero_optimizer(prepared: Any) -> Any:
    """The ZeRO optimizer inside accelerate's DeepSpeedOptimizerWrapper."""
    return getattr(prepared, "optimizer", prepared)


def _fp32_partitions(zero: Any) -> list[torch.Tensor]:
    """This rank's flat fp32 partitions, which prism's AdamW steps (ZeRO-3 / ZeRO-1,2 names)."""
    for attribute in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups"):
        parts = getattr(zero, attribute, None)
        if parts is not None:
            return list(parts)
    raise CheckpointError(f"cannot find the fp32 partitions of DeepSpeed's {type(zero).__name__}: "
                          "this DeepSpeed version is not supported for step checkpoints",
                          hint="set [train] save_every_steps = 0, or install the deepspeed version prism was tested with")


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _check_shard(shard: dict[str, Any], parts: list[torch.Tensor], base: torch.optim.Optimizer) -> None:
    """The saved partition must fit this engine's partitions (same stage, processes, parameters)."""
    problem = None
    if len(shard.get("param_groups", [])) != len(base.param_groups):
        problem = f"{len(shard.get('param_groups', []))} parameter groups saved, {len(base.param_groups)} now"
    elif len(shard["state"]) != len(parts):
        problem = f"{len(shard['state'])} partitions saved, {len(parts)} now"
    else:
        for index, part in enumerate(parts):
            for key, value in shard["state"].get(index, {}).items():
                if torch.is_tensor(value) and value.numel() > 1 and value.numel() != part.numel():
                    problem = (f"optimizer state {key!r} of partition {index} has {value.numel()} elements, "
                               f"this engine's partition {part.numel()}")
    if problem:
        raise CheckpointError(f"the step checkpoint's optimizer state does not fit this DeepSpeed engine: {problem}",
                              hint="resume with the same [distributed] settings and processes, or pass --restart")
