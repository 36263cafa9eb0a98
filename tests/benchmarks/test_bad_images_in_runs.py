"""`prism train` on a training image that must not be used: one message, exit 1, no traceback,
and nothing already on disk changed.

The run's data is the generated benchmark with a private copy of the colour task (the first 16
training records and their images), so that one record can point at a bad image.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.benchmarks.bad_images import bomb_png
from tests.conftest import REPO, run_cli

RECORDS = 16
QUICK = ["--tasks", "0", "--set", "train.max_steps=2", "--set", "train.global_batch_size=8",
         "--set", f"benchmark.max_train_samples={RECORDS}", "--set", "benchmark.max_test_samples=2",
         "--set", "infer.batch_size=8"]


@pytest.fixture
def project(tmp_path: Path, synthetic_data: Path) -> Path:
    """prism.toml on the embedded default; data/synthetic links every task but colour to the shared copy."""
    shutil.copy(REPO / "prism.toml", tmp_path / "prism.toml")
    data = tmp_path / "data" / "synthetic"
    data.mkdir(parents=True)
    for entry in synthetic_data.iterdir():
        if entry.is_dir() and entry.name != "colour":
            (data / entry.name).symlink_to(entry, target_is_directory=True)
        elif entry.is_file():
            shutil.copy(entry, data / entry.name)
    colour = data / "colour"
    (colour / "images").mkdir(parents=True)
    shutil.copy(synthetic_data / "colour" / "test.json", colour / "test.json")
    train = json.loads((synthetic_data / "colour" / "train.json").read_text(encoding="utf-8"))[:RECORDS]
    for record in train:
        shutil.copy(synthetic_data / "colour" / record["image"], colour / record["image"])
    (colour / "train.json").write_text(json.dumps(train), encoding="utf-8")
    return tmp_path


def _point_first_record_at(project: Path, image: str) -> Path:
    path = project / "data" / "synthetic" / "colour" / "train.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    records[0]["image"] = image
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _files(folder: Path) -> dict[str, bytes]:
    found = {}
    for parent, _, names in os.walk(folder):  # the shared task folders are links: not walked
        for name in names:
            path = Path(parent) / name
            found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def _one_error(result) -> str:
    assert result.code == 1, result
    assert "Traceback" not in result.stderr, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result
    return result.stderr[result.stderr.index("error:"):]


def _train(project: Path):
    before = _files(project)
    result = run_cli(["train", *QUICK], cwd=project, env={"OMP_NUM_THREADS": "1", "COLUMNS": "400"})
    after = _files(project)
    assert {name: after.get(name) for name in before} == before  # nothing already written changed
    return result


def test_train_refuses_a_decompression_bomb_naming_file_and_record(project):
    bomb = bomb_png(project / "data" / "synthetic" / "colour" / "images" / "bomb.png")
    path = _point_first_record_at(project, "images/bomb.png")
    message = _one_error(_train(project))
    assert f"cannot decode image {bomb.resolve()}" in message and "DecompressionBombError" in message
    assert str(path) in message and "id 'colour_00000'" in message
    assert "prism data check" in message


def test_train_refuses_an_image_that_links_out_of_the_image_root(project):
    Image.new("RGB", (32, 32)).save(project / "private.png")
    (project / "data" / "synthetic" / "colour" / "images" / "leak.png").symlink_to(project / "private.png")
    path = _point_first_record_at(project, "images/leak.png")
    message = _one_error(_train(project))
    assert f"{path}: record 0: image path 'images/leak.png'" in message
    assert "leads through a symlink to" in message and "outside the image root" in message
