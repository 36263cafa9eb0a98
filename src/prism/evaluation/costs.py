"""Cost figures of a run (run.json ``costs``, see prism.engine.costs) as report tables and compare columns."""

from __future__ import annotations

from typing import Any, Mapping


def format_bytes(value: Any) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _number(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{float(value):,.{digits}f}"


def hours_label(costs: Mapping[str, Any]) -> str:
    """GPU-hours on CUDA; device-hours otherwise, so CPU time is never read as GPU time."""
    return "GPU-hours" if costs.get("device_type") == "cuda" else "device-hours"


def compare_columns(costs: Mapping[str, Any] | None) -> dict[str, Any]:
    """A method's cost columns for ``prism eval compare`` (None where the run recorded no costs)."""
    totals = (costs or {}).get("totals", {})
    return {
        "train_hours": None if not totals else totals.get("train_seconds", 0) / 3600,
        "eval_hours": None if not totals else totals.get("eval_seconds", 0) / 3600,
        "device_hours": totals.get("device_hours"),
        "device_type": (costs or {}).get("device_type"),
        "devices": (costs or {}).get("devices"),
        "peak_memory_bytes": totals.get("peak_memory_bytes"),
    }


def cost_markdown(costs: Mapping[str, Any]) -> list[str]:
    """The report's Cost section: a row per task and the totals."""
    label = hours_label(costs)
    out = ["## Cost", "",
           f"{costs.get('devices', '?')} {costs.get('device_type', '?')} device(s); {label} = devices x wall hours; "
           f"peak memory: {costs.get('peak_memory_kind', '?')}.", "",
           "| task | train s | samples/s | tokens/s | steps | eval s | generations/s | gen tokens/s | peak memory |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def row(name: str, train: Mapping[str, Any], evaluation: Mapping[str, Any], peak: Any) -> str:
        cells = [_number(train.get("seconds")), _number(train.get("samples_per_s")),
                 _number(train.get("tokens_per_s")), _number(train.get("steps"), 0),
                 _number(evaluation.get("seconds")), _number(evaluation.get("samples_per_s")),
                 _number(evaluation.get("tokens_per_s")), format_bytes(peak)]
        return f"| {name} | " + " | ".join(cells) + " |"

    for name, task in costs.get("tasks", {}).items():
        out.append(row(str(name).replace("|", "\\|"), task.get("train", {}), task.get("eval", {}),
                       task.get("peak_memory_bytes")))
    totals = costs.get("totals", {})
    if totals:
        out.append(row("**total**",
                       {"seconds": totals.get("train_seconds"), "samples_per_s": totals.get("train_samples_per_s"),
                        "tokens_per_s": totals.get("train_tokens_per_s"), "steps": totals.get("train_steps")},
                       {"seconds": totals.get("eval_seconds"), "samples_per_s": totals.get("eval_samples_per_s"),
                        "tokens_per_s": totals.get("eval_tokens_per_s")}, totals.get("peak_memory_bytes")))
        out += ["", f"{label}: {_number(totals.get('device_hours'), 4)} "
                f"({_number(totals.get('seconds'))} s wall); training samples {totals.get('train_samples', 0)}, "
                f"tokens {totals.get('train_tokens', 0)}; generations {totals.get('generations', 0)}, "
                f"generated tokens {totals.get('generated_tokens', 0)}."]
    out.append("")
    return out
