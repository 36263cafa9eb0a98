"""What a finished run leaves for collaborators: one fingerprint everywhere, readable files."""

from __future__ import annotations

import json
import os
import stat

from prism.engine.loop import train

from .conftest import resolve


def test_one_fingerprint_and_group_readable_results(project):
    previous = os.umask(0o022)
    try:
        resolved = resolve(project, "benchmark.tasks='0'", "train.max_steps=2")
        outcome = train(resolved)
    finally:
        os.umask(previous)
    results = outcome.layout.results_dir
    checkpoint = outcome.layout.checkpoint(0)
    fingerprint = resolved.hash()
    assert json.loads((checkpoint / "prism_state.json").read_text())["config_hash"] == fingerprint
    assert json.loads((results / "run.json").read_text())["fingerprint"] == fingerprint
    assert fingerprint in (results / "config.resolved.toml").read_text()
    written = [results / name for name in ("accuracy_matrix.json", "cl_metrics.json", "config.resolved.toml",
                                           "run.json", "metrics.jsonl")]
    written += [p for p in checkpoint.iterdir() if p.is_file()]
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, f"{path.name} is {oct(mode)}, not readable by group and others"


def test_checkpoints_of_prism_0_1_keep_matching_their_run():
    from prism.engine.task_checkpoints import same_fingerprint

    full = "ab" * 32
    assert same_fingerprint(full, full) and same_fingerprint(full[:16], full)
    assert not same_fingerprint(full[:15], full) and not same_fingerprint("cd" * 8, full)
    assert not same_fingerprint(None, full) and not same_fingerprint("", full)
