"""`prism ckpt list|inspect|verify|convert|export`: what checkpoints exist, what one holds
(verified), re-hashing checkpoints, converting an original LLaVA-1.5 release to the llava-hf
format, and exporting a checkpoint as a standalone merged model or one peft LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prism.cli.common import emit_json, stderr_console
from prism.cli.completion import complete_checkpoint
from prism.cli.help_text import add_command, argument, group, option
from prism.cli.options import ConfigOpt, JsonOpt, SetOpt, WeightDtype, choice_value

AllRunsOpt = Annotated[bool, option("--all", help="Every run under the output folder, "
                                    "not only the configured benchmark/method.")]
NameArg = Annotated[str, argument(help="Checkpoint name (e.g. Task2_llava) or folder path.",
                                  autocompletion=complete_checkpoint)]
NamesArg = Annotated[Optional[list[str]], argument(
    metavar="[NAME|PATH]...", help="Checkpoint names (e.g. Task2_llava) or folders; default: every "
    "checkpoint of the configured run.", autocompletion=complete_checkpoint, show_default=False)]
NoVerifyOpt = Annotated[bool, option("--no-verify", help="Skip the sha256 hashes (sizes, the "
                                     "manifest's listing and headers are still checked).")]
SrcArg = Annotated[str, argument(metavar="SRC", help="Original LLaVA-1.5 folder "
                                 "(LlavaLlamaForCausalLM, mm_projector, tokenizer.model).", show_default=False)]
DstArg = Annotated[str, argument(metavar="DST", help="Output folder for the llava-hf model.", show_default=False)]
VisionTowerOpt = Annotated[Optional[str], option(
    "--vision-tower", help="CLIP tower folder or cached hub id; overrides the checkpoint's "
    "mm_vision_tower.", show_default=False)]
ConvertDtypeOpt = Annotated[WeightDtype, option(  # type: ignore[valid-type]
    "--dtype", help="Weight dtype to write: auto (the checkpoint's own), float16, bfloat16 or float32.")]
AUTO_DTYPE = WeightDtype("auto")
ToOpt = Annotated[str, option("--to", metavar="DIR", help="Folder to write (must not exist; see --force).",
                              show_default=False)]
AdapterOnlyOpt = Annotated[bool, option("--adapter-only", help="Write one stock peft LoRA "
                                        "(adapter_model.safetensors + adapter_config.json) "
                                        "instead of a merged model.")]
ExportDtypeOpt = Annotated[WeightDtype, option(  # type: ignore[valid-type]
    "--dtype", help="Weight dtype to write: auto (the base model's; adapters: float32), float32, float16 "
    "or bfloat16.")]


def _output_dir(config, set_) -> "tuple":
    from prism.config import load_config

    resolved = load_config(config, sets=set_ or [], validate_method=False)
    return resolved.output_dir, resolved


def list_(all_runs: AllRunsOpt = False, config: ConfigOpt = None, set_: SetOpt = None,
          json_: JsonOpt = False) -> None:
    """Checkpoints of the configured run (or of every run with --all).

    Examples:
      prism ckpt list
      prism ckpt list --all --json
    """
    from prism.checkpoint.inspect import list_checkpoints

    output_dir, resolved = _output_dir(config, set_)
    cfg = resolved.config
    rows = list_checkpoints(output_dir, None if all_runs else cfg.benchmark.id,
                            None if all_runs else cfg.method.id)
    if json_:
        emit_json(rows)
        return
    console = stderr_console()
    if not rows:
        console.print(f"no checkpoints under {output_dir / 'checkpoints'}")
        return
    from rich.table import Table

    table = Table(title=f"checkpoints in {output_dir}", title_justify="left")
    for column in ("name", "benchmark", "method", "status", "tasks seen", "created"):
        table.add_column(column)
    for r in rows:
        status = r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/]"
        table.add_row(r["name"], r["benchmark"], r["method"], status,
                      ", ".join(map(str, r["tasks_seen"])), str(r["created"] or ""))
    console.print(table)
    for r in rows:
        for problem in r["problems"]:
            console.print(f"[red]{r['name']}[/]: {problem}", highlight=False)
    console.print("[dim]status checks sizes and headers; `prism ckpt verify` re-hashes every file[/]")


def inspect(name: NameArg, config: ConfigOpt = None, set_: SetOpt = None, json_: JsonOpt = False,
            no_verify: NoVerifyOpt = False) -> None:
    """What a checkpoint (a name, or a folder anywhere) holds: tasks seen, method state, adapter tensors;
    verified against its manifest.

    Examples:
      prism ckpt inspect Task1_llava
      prism ckpt inspect outputs/checkpoints/synthetic/ewc/Task0_llava --no-verify
    """
    from prism.checkpoint.inspect import inspect_checkpoint, list_checkpoints, resolve_checkpoint
    from prism.checkpoint.store import VERIFY_HINT
    from prism.errors import CheckpointError

    output_dir, resolved = _output_dir(config, set_)
    cfg = resolved.config
    candidates = list_checkpoints(output_dir, cfg.benchmark.id, cfg.method.id) or list_checkpoints(output_dir)
    folder = resolve_checkpoint(name, candidates)
    report = inspect_checkpoint(folder, verify=not no_verify)
    if json_:
        emit_json(report)
    else:
        _print_report(report)
    if report["problems"]:
        raise CheckpointError(f"checkpoint {folder} does not verify: " + "; ".join(report["problems"]),
                              hint=VERIFY_HINT.format(folder=folder))


def convert(src: SrcArg, dst: DstArg, vision_tower: VisionTowerOpt = None,
            dtype: ConvertDtypeOpt = AUTO_DTYPE,
            force: Annotated[bool, option("--force", help="Replace DST if it exists.")] = False,
            json_: JsonOpt = False) -> None:
    """Write an original LLaVA-1.5 checkpoint (liuhaotian/llava-v1.5-7b format) as a llava-hf folder.

    Examples:
      prism ckpt convert llava-v1.5-7b llava-v1.5-7b-hf
      prism ckpt convert llava-v1.5-7b llava-v1.5-7b-hf --vision-tower clip-vit-large-patch14-336 --dtype float16
    """
    from prism.backbones.llava_original import convert_checkpoint

    record = convert_checkpoint(src, dst, vision_tower=vision_tower, dtype=choice_value(dtype), force=force)
    if json_:
        emit_json(record)
    else:
        stderr_console().print(f"wrote {record['output']} (llava-hf, {record['dtype']}, vision tower "
                               f"{record['vision_tower']})", highlight=False)


def export(
    name: NameArg, to: ToOpt, adapter_only: AdapterOnlyOpt = False,
    dtype: ExportDtypeOpt = AUTO_DTYPE,
    force: Annotated[bool, option("--force", help="Replace DIR if it holds an earlier export "
                                  "(or is empty).")] = False,
    config: ConfigOpt = None, set_: SetOpt = None, json_: JsonOpt = False,
) -> None:
    """Merge a checkpoint's adapters into the base and write a llava-hf folder that plain transformers loads.

    Only for methods that answer every input with a fixed mix of slots (such as ft_lora, replay_lora,
    ewc, joint, olora, zeroshot); a method that routes per input is refused.

    Examples:
      prism ckpt export Task2_llava --to exported/task2
      prism ckpt export Task2_llava --to exported/task2-lora --adapter-only
    """
    from prism.checkpoint.export import export_checkpoint
    from prism.checkpoint.inspect import list_checkpoints, resolve_checkpoint

    output_dir, resolved = _output_dir(config, set_)
    cfg = resolved.config
    candidates = list_checkpoints(output_dir, cfg.benchmark.id, cfg.method.id) or list_checkpoints(output_dir)
    folder = resolve_checkpoint(name, candidates)
    record = export_checkpoint(resolved, folder, to, adapter_only=adapter_only, dtype=choice_value(dtype),
                               force=force)
    if json_:
        emit_json(record)
        return
    merge = record["merge"]
    what = "peft LoRA" if adapter_only else "merged llava-hf model"
    mix = {"base": "the base model, no adapters", "single-slot": "one slot"}.get(
        merge["kind"], f"{len(merge['slots'])} slots, {merge['kind']}")
    stderr_console().print(f"wrote {record['output']} ({what}, {record['dtype']}; {record['method']}: {mix})",
                           highlight=False)


def verify(names: NamesArg = None, config: ConfigOpt = None, set_: SetOpt = None,
           json_: JsonOpt = False) -> None:
    """Re-hash every file of each checkpoint against its manifest and check its core files; exit 1 if one fails.

    Examples:
      prism ckpt verify
      prism ckpt verify Task0_llava Task1_llava --json
    """
    from prism.checkpoint.inspect import list_checkpoints, resolve_checkpoint, verify_report
    from prism.errors import CheckpointError

    output_dir, resolved = _output_dir(config, set_)
    cfg = resolved.config
    run = list_checkpoints(output_dir, cfg.benchmark.id, cfg.method.id)
    if names:
        candidates = run or list_checkpoints(output_dir)
        folders = [resolve_checkpoint(name, candidates) for name in names]
    else:
        folders = [Path(row["path"]) for row in run]
    if not folders:
        raise CheckpointError(f"no checkpoints of {cfg.benchmark.id}/{cfg.method.id} under "
                              f"{output_dir / 'checkpoints'}",
                              hint="name checkpoints or folders to verify, or run `prism train` first")
    reports = [verify_report(folder) for folder in folders]
    if json_:
        emit_json(reports)
    else:
        console = stderr_console()
        for r in reports:
            if r["verified"]:
                console.print(f"[green]verified[/] {r['path']} ({r['files']} files, {r['bytes']:,} bytes)",
                              highlight=False)
            else:
                console.print(f"[red]does not verify[/] {r['path']}", highlight=False)
                for problem in r["problems"]:
                    console.print(f"  {problem}", highlight=False)
    bad = [r for r in reports if not r["verified"]]
    if bad:
        raise CheckpointError(
            f"{len(bad)} of {len(reports)} checkpoints do not verify: "
            + "; ".join(f"{r['path']} ({'; '.join(r['problems'])})" for r in bad),
            hint="train those tasks again with `prism train --restart`, or restore the folders from a copy")


def register(app: typer.Typer) -> None:
    ckpt = group("Checkpoints: list them, inspect one, verify them, convert original LLaVA-1.5 "
                 "weights, export one as a standalone model.\n\n"
                 "Examples:\n  prism ckpt list --all\n  prism ckpt verify", no_args_is_help=True)
    add_command(ckpt, "list", list_)
    add_command(ckpt, "inspect", inspect)
    add_command(ckpt, "convert", convert)
    add_command(ckpt, "export", export)
    add_command(ckpt, "verify", verify)
    app.add_typer(ckpt, name="ckpt")


def _print_report(report: dict) -> None:
    from rich.table import Table

    console = stderr_console()
    state = report["state"]
    console.print(f"[bold]{report['path']}[/]")
    for key in ("prism_version", "method", "backbone", "model", "benchmark", "tasks_seen", "config_hash", "created"):
        if key in state:
            console.print(f"  {key}: {state[key]}", highlight=False)
    if state.get("method_params"):
        console.print(f"  method params: {state['method_params']}", highlight=False)
    if "adapter_tensors" in report:
        t = report["adapter_tensors"]
        console.print(f"  adapters: {t['tensors']} tensors, {t['elements']:,} parameters {t['dtypes']}")
    if "adapter_config" in report:
        c = report["adapter_config"]
        console.print(f"  adapter_config: {c.get('peft_type')} r={c.get('r')} alpha={c.get('lora_alpha')}")
    if "state_tensors" in report:
        t = report["state_tensors"]
        console.print(f"  method state tensors: {t['tensors']} tensors, {t['elements']:,} values")
    table = Table(title="files", title_justify="left")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for name, size in report["files"].items():
        table.add_row(name, f"{size:,}")
    console.print(table)
    for problem in report["problems"]:
        console.print(f"[red]{problem}[/]", highlight=False)
    if "verified" in report:
        console.print("[green]verified: every file matches the manifest[/]" if report["verified"]
                      else "[red]NOT verified[/]")
    elif not report["problems"]:
        console.print("sizes and headers match the manifest (hashes not checked)")
