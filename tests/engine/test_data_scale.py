"""At 336 px (InternVL-Chat 1.0's geometry): a run's memory and start-up do not grow with the task,
and an image rewritten after `prism data check --write-manifest` stops training naming file and record."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine import scale_data

pytestmark = pytest.mark.slow

#: the run measured: 2 steps of 2 records, 2 DataLoader workers
EXTRA = "num_workers = 2"

_MEASURE = r'''
import json, resource, subprocess, sys, time
from pathlib import Path
project, metrics = Path(sys.argv[1]), Path(sys.argv[2])
started = time.perf_counter()
proc = subprocess.Popen([sys.executable, "-m", "prism", "train"], cwd=project,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
first = None
while proc.poll() is None:
    if first is None and metrics.exists() and metrics.stat().st_size:
        first = time.perf_counter() - started
    time.sleep(0.02)
stderr = proc.stderr.read()
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB; the largest of prism and its workers
print(json.dumps({"code": proc.returncode, "first_step": first, "peak_kib": peak, "stderr": stderr[-3000:]}))
'''


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return scale_data.build_model(tmp_path_factory.mktemp("internvl336") / "model")


def _project(folder: Path, model: Path, data: Path, **kwargs) -> Path:
    folder.mkdir(parents=True)
    (folder / "prism.toml").write_text(scale_data.project_toml(model, data, batch=2, **kwargs), encoding="utf-8")
    return folder


def _measure(project: Path) -> dict:
    import json

    metrics = project / "outputs" / "results" / "ucit" / "ft_lora" / "metrics.jsonl"
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(project), str(metrics)], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, COLUMNS="200"))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["code"] == 0, result["stderr"]
    return result


def test_peak_rss_and_start_up_do_not_grow_with_the_task(model, tmp_path):
    """Before streaming: 0.76 GB at 200 records, 3.1 GB at 2,000 (every record's pixels held)."""
    runs = {}
    for records in (200, 2000):
        data = scale_data.write_task(tmp_path / f"data{records}", records, images=32, text_only=0.1)
        runs[records] = _measure(_project(tmp_path / f"run{records}", model, data, extra=EXTRA))
    small, large = runs[200], runs[2000]
    assert large["peak_kib"] <= 1.25 * small["peak_kib"], (small["peak_kib"], large["peak_kib"])
    assert small["first_step"] is not None and large["first_step"] is not None  # both reached a first step


def test_start_up_decodes_no_image_before_the_first_batch(tmp_path, monkeypatch):
    """Start-up work does not grow with the task: building the dataset of 2,000 records reads no
    image, and serving the first batch reads that batch's images only. (Wall-clock start-up time
    is printed by bench/data_pipeline.py, never asserted: it varies with the machine's load.)"""
    from types import SimpleNamespace

    from prism.backbones.llava import LlavaBackbone
    from prism.benchmarks import data as data_module
    from prism.benchmarks.data import TaskDataset
    from prism.benchmarks.records import load_train_records

    root = scale_data.write_task(tmp_path / "data", 2000, images=32, text_only=0.1)
    spec = scale_data.task_spec()
    records = load_train_records(root, spec)
    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    reads: list[str] = []
    real = data_module.load_image
    monkeypatch.setattr(data_module, "load_image", lambda path, **kw: reads.append(str(path)) or real(path, **kw))
    dataset = TaskDataset(records, backbone=backbone, root=root, specs=[spec])
    assert len(dataset) == 2000 and reads == []
    batch = next(dataset.batches(4, generator=0))
    assert 1 <= len(reads) <= len(batch) == 4


def test_an_image_that_differs_from_the_manifest_stops_training(model, tmp_path):
    from prism.benchmarks.image_manifest import ImageManifest, entry_of

    data = scale_data.write_task(tmp_path / "data", 6, images=1)  # every record shows image 00000.png
    image = data / scale_data.IMAGE_ROOT / scale_data.TASK / "00000.png"
    key = f"{scale_data.IMAGE_ROOT}/{scale_data.TASK}/00000.png"
    expected = entry_of(image)
    ImageManifest.write(data, {key: expected})
    scale_data._image(99).save(image)  # another picture under the same name
    project = _project(tmp_path / "run", model, data, extra=EXTRA)
    before = {p: p.read_bytes() for p in [*data.rglob("*"), project / "prism.toml"] if p.is_file()}
    env = dict(os.environ, COLUMNS="1000")
    result = subprocess.run([sys.executable, "-m", "prism", "train"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    err = " ".join(result.stderr.split())  # as one line, however the terminal wrapped it
    assert "Traceback" not in err and "worker" not in err.lower()
    assert f"image {image} (task ImageNet-R, {data / scale_data.TRAIN_FILE}, id 'r" in err
    assert f"does not match the image manifest {data / 'prism_images.sha256'}" in err
    assert f"expected {expected.size} (sha256 {expected.sha256})" in err
    assert {p: p.read_bytes() for p in before} == before
