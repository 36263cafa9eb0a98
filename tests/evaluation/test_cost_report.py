"""The run's costs in report.md (Cost section) and in ``prism eval compare`` (columns and --json)."""

from __future__ import annotations

import json

from prism.engine.loop import train
from prism.engine.rescore import rescore, write_artifacts
from prism.evaluation.costs import compare_columns, cost_markdown, format_bytes
from tests.conftest import run_cli
from tests.engine.conftest import QUICK, resolve

SETS = ["benchmark.tasks='0'", "train.max_steps=2", "train.global_batch_size=4", "method.id='ft_lora'"]


def test_a_run_reports_and_compares_its_costs(project):
    resolved = resolve(project, *SETS)
    outcome = train(resolved)
    layout, matrix, summary = rescore(resolved)
    report = write_artifacts(resolved, layout, matrix, summary)["report"].read_text(encoding="utf-8")
    assert "## Cost" in report and "device-hours" in report and "GPU-hours" not in report
    task = outcome.trained[0]
    assert f"| {task} |" in report.split("## Cost")[1] and "| **total** |" in report

    args = ["eval", "compare", "ft_lora", *[a for s in [*QUICK, *SETS] for a in ("--set", s)]]
    listed = run_cli(args, cwd=project)
    assert listed.code == 0, listed.stderr
    assert all(header in listed.stderr for header in ("train h", "eval h", "device-h", "peak mem"))
    as_json = run_cli([*args, "--json"], cwd=project)
    assert as_json.code == 0, as_json.stderr
    costs = json.loads(as_json.stdout)["ft_lora"]["costs"]
    assert costs["device_type"] == "cpu" and costs["devices"] == 1
    assert costs["train_hours"] > 0 and costs["eval_hours"] > 0 and costs["peak_memory_bytes"] > 0
    assert costs["device_hours"] >= costs["train_hours"]


def test_runs_without_costs_show_dashes_and_gpu_runs_say_gpu_hours():
    assert compare_columns(None)["device_hours"] is None
    assert format_bytes(None) == "-" and format_bytes(3 * 1024 ** 3) == "3.0 GiB" and format_bytes(512) == "512 B"
    cuda = {"devices": 2, "device_type": "cuda", "peak_memory_kind": "cuda max_memory_allocated",
            "tasks": {"a": {"train": {"seconds": 10.0, "steps": 3}, "peak_memory_bytes": 2048}},
            "totals": {"train_seconds": 10.0, "device_hours": 0.0056, "peak_memory_bytes": 2048}}
    text = "\n".join(cost_markdown(cuda))
    assert "GPU-hours: 0.0056" in text and "2.0 KiB" in text and "| a | 10.0 |" in text
