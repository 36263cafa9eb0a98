"""The acceptance run: the embedded default learns every task and forgets earlier ones.

This is the README's main job (ft_lora over the whole synthetic sequence with the
repository's prism.toml) plus the zeroshot reference, at full size. It takes a
couple of minutes on 2 CPU cores.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ft_lora_learns_and_forgets(tmp_path, synthetic_data):
    from prism.config import load_config
    from prism.engine.loop import train

    shutil.copy(REPO / "prism.toml", tmp_path / "prism.toml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic").symlink_to(synthetic_data, target_is_directory=True)

    def run(method: str):
        resolved = load_config(tmp_path / "prism.toml", cwd=tmp_path, env={}, flags={"method.id": method})
        return train(resolved)

    zeroshot = run("zeroshot").matrix.to_list()
    ft = run("ft_lora")
    matrix = ft.matrix.to_list()
    tasks = ft.matrix.task_names
    assert len(tasks) == 5
    for i, name in enumerate(tasks):
        assert matrix[i][i] >= zeroshot[i][i] + 30, f"{name}: diagonal {matrix[i][i]} vs zeroshot {zeroshot[i][i]}"
    assert ft.summary["bwt"] < -10, ft.summary
    assert ft.summary["mft"] > 60, ft.summary
