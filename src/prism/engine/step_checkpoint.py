"""Step checkpoints: everything needed to continue a task's step loop after a kill.

A task checkpoint (``Task<k>_<backbone>/``) is written when a task ends. In
between, every ``[train] save_every_steps`` steps the fitter writes a step
checkpoint to ``<checkpoints>/steps/Task<k>_<backbone>/``: the trainable
weights, the optimizer and scheduler state, every RNG state and the position in
the data stream. It is written like a task checkpoint (temporary folder,
sha256 manifest, rename), so a kill leaves the previous step checkpoint or the
new one. Nothing is pickled: tensors go to safetensors, the rest to JSON.

Under DeepSpeed the optimizer state is partitioned across ranks: the checkpoint
then holds every rank's partition of AdamW's state (``optimizer.zero.<rank>.*``)
and names the engine that wrote it (``engine``); it resumes only under the same
ZeRO stage and number of processes (``prism.engine.zero``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prism.checkpoint import store
from prism.errors import CheckpointError

FORMAT = "prism-step-checkpoint/1"
PROGRESS = "progress.json"
TENSORS = "state.safetensors"


@dataclass
class FitState:
    """The step loop at a step boundary: ``step`` optimizer steps are done."""

    step: int
    steps: int
    samples: int
    losses: list[float]
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # torch optimizer state_dict; DeepSpeed: {"zero_shards": [one per rank]}
    scheduler: dict[str, Any]  # torch LR scheduler state_dict (plain data)
    data: tuple[torch.Tensor, dict[str, Any]]  # DataStream.state()
    rng: list[tuple[dict[str, torch.Tensor], dict[str, Any]]]  # seeding.capture_rng() of each rank
    info: dict[str, Any] = field(default_factory=dict)  # who wrote it: task, fingerprint, ...
    #: the engine whose optimizer layout this is: None (one AdamW state) or DeepSpeed's
    #: {"backend": "deepspeed", "zero_stage": 2|3, "processes": N}
    engine: dict[str, Any] | None = None
    #: the method's statistics between steps (``Method.step_state``: EMAs, covariance sketches)
    method: dict[str, torch.Tensor] = field(default_factory=dict)


def save_step_checkpoint(folder: Path, state: FitState) -> Path:
    """Write ``state`` atomically to ``folder`` (replacing the previous step checkpoint)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {f"trainable.{k}": v for k, v in state.trainable.items()}
    tensors.update({f"method.{k}": v.detach().cpu().contiguous() for k, v in state.method.items()})
    if "zero_shards" in state.optimizer:
        opt_meta = {"zero_shards": []}
        for rank, shard in enumerate(state.optimizer["zero_shards"]):
            shard_tensors, shard_meta = _split_optimizer(shard)
            tensors.update({f"optimizer.zero.{rank}.{k}": v for k, v in shard_tensors.items()})
            opt_meta["zero_shards"].append(shard_meta)
    else:
        opt_tensors, opt_meta = _split_optimizer(state.optimizer)
        tensors.update({f"optimizer.{k}": v for k, v in opt_tensors.items()})
    rng_meta = []
    for rank, (rng_tensors, meta) in enumerate(state.rng):
        tensors.update({f"rng.{rank}.{k}": v for k, v in rng_tensors.items()})
        rng_meta.append(meta)
    data_tensor, data_meta = state.data
    tensors["data.generator"] = data_tensor
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    progress = {
        "format": FORMAT, "step": state.step, "steps": state.steps, "samples": state.samples,
        "losses": state.losses, "optimizer": opt_meta, "scheduler": state.scheduler,
        "rng": rng_meta, "data": data_meta, "info": state.info, "engine": state.engine,
    }

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / TENSORS))
        (tmp / PROGRESS).write_text(json.dumps(progress, default=_plain), encoding="utf-8")

    return store.write_checkpoint(folder, fill)


def load_step_checkpoint(folder: Path) -> FitState | None:
    """The step checkpoint in ``folder``, or None when there is none; a corrupt one is an error."""
    from safetensors.torch import load_file

    store.recover_interrupted(folder.parent)
    if not (folder / store.MANIFEST).is_file():
        return None
    problems = store.verify_checkpoint(folder)
    if problems:
        raise CheckpointError(f"step checkpoint {folder} does not verify: " + "; ".join(problems),
                              hint="delete that folder to restart the task from its beginning, or pass --restart")
    progress = json.loads((folder / PROGRESS).read_text(encoding="utf-8"))
    if progress.get("format") != FORMAT:
        raise CheckpointError(f"{folder / PROGRESS}: unknown format {progress.get('format')!r}")
    tensors = load_file(str(folder / TENSORS))

    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    if "zero_shards" in progress["optimizer"]:
        optimizer = {"zero_shards": [_join_optimizer(group(f"optimizer.zero.{rank}."), meta)
                                     for rank, meta in enumerate(progress["optimizer"]["zero_shards"])]}
    else:
        optimizer = _join_optimizer(group("optimizer."), progress["optimizer"])
    return FitState(
        step=int(progress["step"]), steps=int(progress["steps"]), samples=int(progress["samples"]),
        losses=[float(x) for x in progress["losses"]], trainable=group("trainable."),
        optimizer=optimizer,
        scheduler=progress["scheduler"], data=(tensors["data.generator"], progress["data"]),
        rng=[(group(f"rng.{rank}."), meta) for rank, meta in enumerate(progress["rng"])],
        info=progress.get("info", {}), engine=progress.get("engine"), method=group("method."),
    )


def _split_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimizer state_dict as (tensors, JSON): per-parameter tensors keyed ``<index>.<name>``."""
    tensors, scalars = {}, {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for source in (tensors, meta["scalars"]):
        for key, value in source.items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _plain(obj: Any) -> Any:
    """JSON for the odd values optimizer/scheduler states hold (tuples are lists already)."""
    if torch.is_tensor(obj):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a step checkpoint")


@dataclass
class StepCheckpointer:
    """Where one task's step checkpoints go, how often, and who writes them (rank 0 only)."""

    folder: Path
    every: int  # 0 = never (an interrupt still saves)
    info: dict[str, Any] = field(default_factory=dict)
    writer: bool = True

    def due(self, step: int, steps: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < steps

    def save(self, state: FitState) -> None:
        if self.writer:
            state.info = dict(self.info)
            save_step_checkpoint(self.folder, state)

    def load(self) -> FitState | None:
        state = load_step_checkpoint(self.folder)
        if state is None:
            return None
        for key, value in self.info.items():
            if state.info.get(key) != value:
                raise CheckpointError(
                    f"step checkpoint {self.folder} was written for {key} = {state.info.get(key)!r}, "
                    f"this run has {value!r}",
                    hint="pass --restart to train this run again, or set [project] output_dir to keep both")
        return state

    def clear(self) -> None:
        """The task is finished (its task checkpoint exists): its step checkpoint is obsolete."""
        import shutil

        if self.writer and self.folder.exists():
            shutil.rmtree(self.folder)
