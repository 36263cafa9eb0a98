"""`prism ckpt export`: a checkpoint as a model that plain transformers (or stock peft) can load.

A method whose answers are a fixed sum of adapter slots (``Method.inference_mix``
returns the slots and their weights) has one set of weights that answers every input:
the base with that sum merged in. That is written as a standalone llava-hf folder
(``LlavaForConditionalGeneration.from_pretrained`` + ``AutoProcessor.from_pretrained``),
or with ``adapter_only`` as one peft LoRA whose rank is the sum of the slots' ranks.
A method that routes per input has no such weights; export refuses it by name.

The checkpoint is verified first and loaded exactly as ``prism infer`` loads it
(``restore_checkpoint``); the output is written to a temporary sibling folder and
renamed into place, with a ``prism_export.json`` saying where it came from.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from prism.checkpoint import store
from prism.errors import CheckpointError, UsageError

EXPORT_RECORD = "prism_export.json"
EXPORT_FORMAT = "prism-export/1"
DTYPES = ("auto", "float32", "float16", "bfloat16")
ADAPTER_SLOT = "default"  # peft's adapter name


# -- checks before anything heavy ------------------------------------------------------------------
def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")


def check_target(checkpoint: Path, target: Path, *, force: bool) -> None:
    """Refuse an output folder that overlaps the checkpoint, or that exists without --force.

    ``--force`` replaces only an earlier export or an empty folder, so a mistyped path
    cannot wipe a project folder.
    """
    source, out = checkpoint.resolve(), target.resolve()
    if out == source or source in out.parents:
        raise UsageError(f"--to {target}: the output folder must be outside the checkpoint {checkpoint}")
    if out in source.parents:
        raise UsageError(f"--to {target}: the output folder contains the checkpoint {checkpoint}; "
                         "exporting there would replace the checkpoint itself")
    if not target.exists():
        return
    if not target.is_dir():
        raise UsageError(f"--to {target}: exists and is not a folder")
    if not force:
        raise UsageError(f"--to {target}: the folder already exists", hint="pass --force to replace it")
    if any(target.iterdir()) and not (target / EXPORT_RECORD).is_file():
        raise UsageError(f"--to {target}: --force replaces only an earlier export (a folder with "
                         f"{EXPORT_RECORD}) or an empty folder, and this one holds other files",
                         hint="choose a new folder, or remove this one yourself")


def check_verified(checkpoint: Path) -> None:
    """The one verification every command uses: hashes, core files listed, JSON readable."""
    store.require_verified(checkpoint)


def refusal(method_id: str, reason: str) -> UsageError:
    return UsageError(
        f"method {method_id!r} cannot be exported as one model: {reason}",
        hint="answer with `prism infer` on the checkpoint instead; a method becomes exportable when its "
             "inference_mix() returns the slots and fixed weights it answers with")


NO_DECLARED_MIX = ("it does not declare a fixed inference mix (Method.inference_mix), so its answers may "
                   "depend on each input (routing, task identity) and no single set of weights reproduces them")


def declares_mix(method_cls: type) -> bool:
    """Whether the class (or a base of it other than ``Method``) overrides ``inference_mix``."""
    from prism.methods.base import Method

    return getattr(method_cls, "inference_mix", Method.inference_mix) is not Method.inference_mix


# -- loading the checkpoint as `prism infer` does ----------------------------------------------------
def method_class(resolved: Any, state: dict[str, Any], checkpoint: Path) -> type:
    from prism.plugins import registry

    method_id = state.get("method")
    if not method_id:
        raise CheckpointError(f"{checkpoint / store.STATE_JSON} does not name the method that wrote it")
    return registry("method", resolved.project_dir).load(method_id)


def as_trained(resolved: Any, state: dict[str, Any]) -> Any:
    """The project's config with the checkpoint's own method and base model, loaded in fp32.

    The checkpoint, not prism.toml, says which method and base its adapters belong to;
    fp32 makes the merge exact whatever the output dtype.
    """
    cfg = resolved.config
    backbone = cfg.backbone.model_copy(update={
        "id": state.get("backbone") or cfg.backbone.id, "model": state.get("model") or cfg.backbone.model,
        "train_precision": "fp32"})
    method = cfg.method.model_copy(update={"id": state["method"]})
    return dataclasses.replace(resolved, config=cfg.model_copy(update={"backbone": backbone, "method": method}))


def load_checkpoint(resolved: Any, checkpoint: Path, state: dict[str, Any], method_cls: type) -> tuple[Any, Any]:
    """(backbone, method) with the checkpoint restored, on the CPU in fp32."""
    from pydantic import ValidationError

    from prism.engine.task_checkpoints import restore_checkpoint
    from prism.engine.session import load_backbone, plan_run, quiet_libraries

    quiet_libraries()
    try:
        params = method_cls.Params.model_validate(state.get("method_params") or {})
    except ValidationError as exc:
        raise CheckpointError(f"{checkpoint / store.STATE_JSON}: method_params do not fit method "
                              f"{state['method']!r} as installed now: {exc.errors()[0]['msg']}") from None
    plan = plan_run(as_trained(resolved, state))
    backbone = load_backbone(plan, device="cpu", purpose="train")
    method = method_cls(params, run_info(plan, state))
    method.attach(backbone)
    restore_checkpoint(method, checkpoint)
    backbone.model.eval()
    return backbone, method


def run_info(plan: Any, state: dict[str, Any]) -> Any:
    """The run the checkpoint belongs to: the configured one when its tasks start with the
    checkpoint's, else just the tasks the checkpoint has seen."""
    from prism.methods.base import RunInfo

    seen = list(state.get("tasks_seen", []))
    indices = list(state.get("task_indices_seen", []))
    seed = plan.config.project.seed
    if state.get("benchmark") == plan.config.benchmark.id and plan.indices[: len(indices)] == indices:
        return RunInfo(num_tasks=len(plan.indices), task_names=[t.name for t in plan.sequence], seed=seed)
    return RunInfo(num_tasks=max(1, len(seen)), task_names=seen, seed=seed)


def checked_mix(method: Any) -> dict[str, float]:
    """The method's fixed mix, refused when it is None and checked against the loaded slots."""
    mix = method.inference_mix()
    if mix is None:
        raise refusal(method.id, "its inference_mix() is None for this checkpoint: the answers depend on "
                      "each input, so no single set of weights reproduces them")
    mix = {str(slot): float(weight) for slot, weight in mix.items()}
    have = set(method.adapters.slots) if method.adapters is not None else set()
    unknown = sorted(set(mix) - have)
    if unknown:
        raise CheckpointError(f"method {method.id!r} says it answers with slot(s) {unknown}, which the "
                              f"checkpoint does not hold (slots: {sorted(have) or 'none'})")
    return mix


def merge_kind(mix: dict[str, float]) -> str:
    used = {slot: weight for slot, weight in mix.items() if weight != 0}
    if not used:
        return "base"
    if len(used) == 1 and next(iter(used.values())) == 1.0:
        return "single-slot"
    return "sum" if all(weight == 1.0 for weight in used.values()) else "weighted-sum"


# -- writing -------------------------------------------------------------------------------------------
def base_dtype(backbone: Any) -> str:
    """The dtype the base model is stored in (its config.json), float32 when it says nothing."""
    path = Path(backbone.resolved_path) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return name if name in DTYPES[1:] else "float32"


def write_merged_model(tmp: Path, backbone: Any, method: Any, mix: dict[str, float], dtype: str) -> None:
    """The base with the mix merged in, in ``dtype``, plus the base's processor and generation config."""
    import torch

    from prism.adapters.merge import merge_into_base
    from prism.backbones.llava import TINY_METADATA_FILE
    from prism.backbones.quiet import quiet_transformers

    if method.adapters is not None:
        merge_into_base(method.adapters, mix)
        method.adapters = None  # the layers are plain linears again
    model = backbone.model.to(getattr(torch, dtype))
    with quiet_transformers():
        model.save_pretrained(tmp)
        processor = backbone.extra.get("processor")
        if processor is not None:
            processor.save_pretrained(tmp)
        else:
            backbone.tokenizer.save_pretrained(tmp)
            backbone.image_processor.save_pretrained(tmp)
    tiny = Path(backbone.resolved_path) / TINY_METADATA_FILE
    if tiny.is_file():  # prism then loads the folder as a base with the same prompt template
        shutil.copy2(tiny, tmp / TINY_METADATA_FILE)


def check_has_adapter(method: Any, mix: dict[str, float]) -> None:
    """--adapter-only needs at least one slot with a weight: the base alone is no LoRA."""
    if method.adapters is None or merge_kind(mix) == "base":
        raise UsageError(f"--adapter-only: method {method.id!r} answers with the base model alone, so there "
                         "is no adapter to write", hint="export the model itself (leave out --adapter-only)")


def write_adapter(tmp: Path, backbone: Any, method: Any, mix: dict[str, float], dtype: str) -> dict[str, Any]:
    """The mix as one stock peft LoRA (``adapter_model.safetensors`` + ``adapter_config.json``)."""
    import torch

    from prism.adapters.io import save_adapters
    from prism.adapters.merge import fold_into_one_slot

    check_has_adapter(method, mix)
    fold_into_one_slot(method.adapters, mix, ADAPTER_SLOT)
    if dtype != "float32":  # the folded slot is float32, as prism creates adapter weights
        with torch.no_grad():
            for param in method.adapters.parameters([ADAPTER_SLOT]):
                param.data = param.data.to(getattr(torch, dtype))
    meta = save_adapters(method.adapters, tmp, base_model_name_or_path=backbone.resolved_path,
                         slots=[ADAPTER_SLOT], routers=False)
    config = json.loads((tmp / store.ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return {"layout": meta["layout"], "r": config["r"], "lora_alpha": config["lora_alpha"],
            "rank_pattern": config.get("rank_pattern") or {}, "alpha_pattern": config.get("alpha_pattern") or {}}


def export_checkpoint(resolved: Any, checkpoint: Path | str, to: Path | str, *, adapter_only: bool = False,
                      dtype: str = "auto", force: bool = False) -> dict[str, Any]:
    """Write ``checkpoint`` as a merged llava-hf model (or one peft LoRA) at ``to``; return the record.

    Every cheap check (dtype, paths, manifest, whether the method can be exported) runs
    before the model loads. Nothing is written unless the whole folder is.
    """
    checkpoint, target = Path(checkpoint), Path(to).expanduser()
    check_dtype(dtype)
    check_target(checkpoint, target, force=force)
    check_verified(checkpoint)
    info = store.read_checkpoint_info(checkpoint)
    method_cls = method_class(resolved, info.state, checkpoint)
    if not declares_mix(method_cls):
        raise refusal(info.state["method"], NO_DECLARED_MIX)
    backbone, method = load_checkpoint(resolved, checkpoint, info.state, method_cls)
    mix = checked_mix(method)
    if adapter_only:
        check_has_adapter(method, mix)
    out_dtype = dtype if dtype != "auto" else ("float32" if adapter_only else base_dtype(backbone))

    import prism
    import transformers

    manifest = store.sha256_file(checkpoint / store.MANIFEST)
    record: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "kind": "peft-lora" if adapter_only else "merged-model",
        "source_checkpoint": str(checkpoint.resolve()),
        "manifest_sha256": manifest,
        "model_id": manifest[:16],  # what the checkpoint's prediction files carry
        "method": info.state["method"],
        "method_params": info.state.get("method_params", {}),
        "benchmark": info.state.get("benchmark"),
        "tasks_seen": info.tasks_seen,
        "base_model": info.state.get("model"),
        "base_model_path": backbone.resolved_path,
        "merge": {"kind": merge_kind(mix), "slots": mix},
        "dtype": out_dtype,
        "prism_version": prism.__version__,
        "transformers_version": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }

    def fill(tmp: Path) -> None:
        if adapter_only:
            record["lora"] = write_adapter(tmp, backbone, method, mix, out_dtype)
        else:
            write_merged_model(tmp, backbone, method, mix, out_dtype)
        store.write_json_atomic(tmp / EXPORT_RECORD, record)

    store.write_checkpoint(target, fill)  # temp folder, manifest, rename into place
    record["output"] = str(target.resolve())
    return record
