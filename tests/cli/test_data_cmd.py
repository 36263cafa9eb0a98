"""`prism data check` in a real process: the report, exit codes, JSON on stdout, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

FOLDERS = {"ImageNet-R": "train.json", "ArxivQA": "train_4w.json", "VizWiz": "train.json",
           "IconQA": "train.json", "CLEVR": "train_4w.json", "Flickr30k": "train_brief_4w.json"}
GT = {"VizWiz": "val_coco_type_3000.json", "Flickr30k": "test_coco_type.json"}


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _turns(image: str) -> list[dict]:
    return [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "a cat"}]


def write_ucit(root: Path) -> None:
    """UCIT in HiDe-LLaVA's layout, two records per split and task, one tiny PNG per record."""
    for folder, train in FOLDERS.items():
        (root / "datasets" / folder).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (5, 5), (i * 90, 30, 30)).save(root / "datasets" / folder / f"{i}.png")
        _json(root / "instructions" / folder / train,
              [{"id": f"{folder}{i}", "image": f"{folder}/{i}.png", "conversations": _turns(f"{i}.png")}
               for i in range(2)])
        _json(root / "instructions" / folder / "test_3000.json",
              [{"question_id": i, "image": f"{folder}/{i}.png", "text": "What is shown?", "answer": "a cat"}
               for i in range(2)])
        if folder in GT:
            _json(root / "instructions" / folder / GT[folder],
                  {"images": [{"id": i, "file_name": f"{i}.png"} for i in range(2)],
                   "annotations": [{"image_id": i, "caption": "a cat"} for i in range(2)]})


def break_imagenet(root: Path) -> Path:
    """A missing image, a corrupt image, a path escaping the root and a malformed record."""
    path = root / "instructions" / "ImageNet-R" / "train.json"
    records = json.loads(path.read_text())
    (root / "datasets" / "ImageNet-R" / "corrupt.png").write_bytes(b"GIF89a definitely not an image")
    records += [{"id": "m", "image": "ImageNet-R/missing.png", "conversations": _turns("")},
                {"id": "c", "image": "ImageNet-R/corrupt.png", "conversations": _turns("")},
                {"id": "e", "image": "../../../etc/escape.png", "conversations": _turns("")},
                {"id": "x", "image": "ImageNet-R/0.png", "conversations": "not a list"}]
    _json(path, records)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    write_ucit(tmp_path / "ucit_data")
    (folder / "prism.toml").write_text(
        f'[benchmark]\nid = "ucit"\nroot = "{(tmp_path / "ucit_data").as_posix()}"\n', encoding="utf-8")
    return folder


def prism(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISM_")}
    env.update(PRISM_DISABLE_PLUGIN_AUTOLOAD="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "prism", "data", "check", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_clean_data_exits_0(project):
    result = prism(project)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "ImageNet-R" in result.stderr and "Flickr30k" in result.stderr
    assert "ucit: 6 task(s), 24 record(s): no problems" in result.stderr
    assert result.stdout == ""


def test_every_problem_in_one_report_and_exit_1(project, tmp_path):
    path = break_imagenet(tmp_path / "ucit_data")
    result = prism(project)
    assert result.returncode == 1
    err = result.stderr
    assert "Traceback" not in err
    for needle in (f"{path} record 2: image not found", "missing.png",
                   f"{path} record 3: cannot decode image", "corrupt.png",
                   f"{path} record 4: image path '../../../etc/escape.png'", "escapes the image root",
                   f"{path} record 5: 'conversations' must be a non-empty list"):
        assert needle in err, needle
    assert "error: ucit: 6 task(s), 28 record(s): 4 problem(s): 1 malformed record, 1 missing image, " \
           "1 corrupt image, 1 escaping image" in err
    assert 'fix_policy = "skip"' in err


def test_json_report_with_task_selection_and_no_images(project, tmp_path):
    break_imagenet(tmp_path / "ucit_data")
    result = prism(project, "--json", "--tasks", "ImageNet-R,2", "--no-images")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["benchmark"] == "ucit" and report["images_checked"] is False
    assert [task["name"] for task in report["tasks"]] == ["ImageNet-R", "VizWiz-Caption"]
    assert {kind: p["count"] for kind, p in report["problems"].items()} == \
        {"malformed_record": 1, "escaping_image": 1}  # image files are not opened under --no-images
    assert report["problems"]["escaping_image"]["examples"][0]["index"] == 4
    assert report["tasks"][0]["problems"] == {"escaping_image": 1, "malformed_record": 1}
    assert report["tasks"][1]["files"]["gt"].endswith("val_coco_type_3000.json")


def test_config_errors_exit_2(project):
    result = prism(project, "--benchmark", "ucitt")
    assert result.returncode == 2 and "did you mean 'ucit'" in result.stderr
    result = prism(project, "--tasks", "ImagNet-R")
    assert result.returncode == 2 and "did you mean 'ImageNet-R'" in result.stderr
    assert "Traceback" not in result.stderr


def test_symlink_leading_out_of_the_image_root_is_outside_the_root(project, tmp_path):
    root = tmp_path / "ucit_data"
    Image.new("RGB", (5, 5)).save(tmp_path / "private.png")
    (root / "datasets" / "ImageNet-R" / "link.png").symlink_to(tmp_path / "private.png")
    (root / "datasets" / "ImageNet-R" / "alias.png").symlink_to(root / "datasets" / "ImageNet-R" / "1.png")
    path = root / "instructions" / "ImageNet-R" / "train.json"
    records = json.loads(path.read_text())
    _json(path, records + [{"id": "l", "image": "ImageNet-R/link.png", "conversations": _turns("")},
                           {"id": "a", "image": "ImageNet-R/alias.png", "conversations": _turns("")}])
    before = path.read_bytes()
    result = prism(project, "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["tasks"][0]["problems"] == {"escaping_image": 1}  # the link inside the folder is fine
    example = report["problems"]["escaping_image"]["examples"][0]
    assert example["index"] == 2 and "leads through a symlink to" in example["detail"]
    assert str((tmp_path / "private.png").resolve()) in example["detail"]
    human = prism(project)
    assert f"{path} record 2: image path 'ImageNet-R/link.png'" in human.stderr
    assert "1 escaping image" in human.stderr
    assert path.read_bytes() == before
