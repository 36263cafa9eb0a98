"""Content-hashed images: `prism data check --write-manifest` records sha256 and size of every
image; reading an image that differs from the manifest is a DataError naming record, file and hash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from prism.benchmarks.check import check_benchmark, load_train_records_checked
from prism.benchmarks.data import TaskDataset
from prism.benchmarks.image_manifest import MANIFEST_FILE, ImageEntry, ImageManifest, entry_of, image_key
from prism.errors import DataError
from tests.benchmarks.test_check import UCIT_FILES, train_path, ucit, write_ucit


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = write_ucit(tmp_path / "UCIT")
    for path in (root / "datasets" / "ImageNet-R").glob("*.png"):  # stored, not deflated: size = f(pixels)
        Image.open(path).convert("RGB").save(path, compress_level=0)
    return root


@pytest.fixture(scope="module")
def backbone():
    from prism.backbones.llava import LlavaBackbone

    return LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))


def _rewrite_same_size(path: Path) -> None:
    """Another picture in a file of exactly the same size (what only the hash can tell apart)."""
    size, before = path.stat().st_size, path.read_bytes()
    Image.new("RGB", (6, 5), (1, 2, 3)).save(path, compress_level=0)
    assert path.stat().st_size == size and path.read_bytes() != before


def _imagenet(root: Path):
    bench = ucit(root)
    spec = next(s for s in bench.task_specs() if s.name == "ImageNet-R")
    return spec, json.loads(train_path(root, "ImageNet-R").read_text())


def test_write_manifest_records_every_image_atomically(root):
    report = check_benchmark(ucit(root), write_manifest=True)
    assert report.ok and report.manifest == str(root / MANIFEST_FILE)
    manifest = ImageManifest.load(root)
    folders = [folder for folder, _, _ in UCIT_FILES.values()]
    assert set(manifest.entries) == {f"datasets/{f}/{i}.png" for f in folders for i in range(3)}
    path = root / "datasets" / "ImageNet-R" / "1.png"
    assert manifest.get("datasets/ImageNet-R/1.png") == entry_of(path)
    assert entry_of(path).size == path.stat().st_size and len(entry_of(path).sha256) == 64
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp file left behind
    assert report.to_dict()["manifest"] == str(root / MANIFEST_FILE)


def test_the_check_reports_images_that_differ_and_does_not_overwrite_the_manifest(root):
    check_benchmark(ucit(root), write_manifest=True)
    before = (root / MANIFEST_FILE).read_bytes()
    _rewrite_same_size(root / "datasets" / "ImageNet-R" / "2.png")
    (root / "datasets" / "IconQA" / "0.png").write_bytes(b"\x89PNG shorter")
    report = check_benchmark(ucit(root))
    assert report.counts["manifest_mismatch"] == 4  # train and test records: 2.png (sha256), IconQA 0.png (size)
    lines = [p.line() for p in report.examples["manifest_mismatch"]]
    assert any("2.png" in line and "sha256" in line and "expected" in line for line in lines)
    again = check_benchmark(ucit(root), write_manifest=True)  # a check with problems writes nothing
    assert not again.ok and again.manifest is None
    assert (root / MANIFEST_FILE).read_bytes() == before


def test_a_dataset_checks_each_image_on_read(root, backbone):
    check_benchmark(ucit(root), write_manifest=True)
    spec, records = _imagenet(root)
    target = root / "datasets" / "ImageNet-R" / "1.png"
    expected = entry_of(target)
    _rewrite_same_size(target)
    by_size = TaskDataset(records, backbone=backbone, root=root, specs=spec)
    assert by_size[1].pixel_values is not None  # same size: only the hash tells
    by_hash = TaskDataset(records, backbone=backbone, root=root, specs=spec, verify_images="hash")
    assert by_hash[0].pixel_values is not None
    with pytest.raises(DataError) as err:
        by_hash[1]
    message = str(err.value)
    assert f"image {target}" in message and "'ImageNet-R-1'" in message and str(train_path(root, "ImageNet-R")) in message
    assert f"expected {expected.sha256}" in message and str(root / MANIFEST_FILE) in message
    target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(DataError, match=rf"{target.stat().st_size} bytes, expected {expected.size} "
                                        rf"\(sha256 {expected.sha256}\)"):
        by_size[1]
    target.unlink()
    with pytest.raises(DataError, match=f"image not found: .*1.png.*expects sha256 {expected.sha256}"):
        by_size[1]


def test_an_image_not_in_the_manifest_and_a_malformed_manifest(root, backbone):
    ImageManifest.write(root, {"datasets/ImageNet-R/0.png": entry_of(root / "datasets/ImageNet-R/0.png")})
    spec, records = _imagenet(root)
    dataset = TaskDataset(records, backbone=backbone, root=root, specs=spec)
    dataset[0]
    with pytest.raises(DataError, match="is not in the image manifest .* 'datasets/ImageNet-R/1.png'"):
        dataset[1]
    (root / MANIFEST_FILE).write_text("# header\nabc 12 x.png\n")
    with pytest.raises(DataError, match=rf"{MANIFEST_FILE}:2: expected '<sha256> <size> <path>'"):
        TaskDataset(records, backbone=backbone, root=root, specs=spec)


def test_keys_are_root_relative_and_an_earlier_manifest_keeps_other_tasks(root):
    assert image_key("datasets", "ImageNet-R/./a/../0.png") == "datasets/ImageNet-R/0.png"
    ImageManifest.write(root, {"datasets/Other/x.png": ImageEntry("0" * 64, 3)})
    check_benchmark(ucit(root), tasks="0", write_manifest=True)
    keys = set(ImageManifest.load(root).entries)
    assert "datasets/Other/x.png" in keys and "datasets/ImageNet-R/0.png" in keys
    assert not any(k.startswith("datasets/ArxivQA") for k in keys)


def test_skip_policy_drops_records_whose_image_differs_from_the_manifest(root):
    check_benchmark(ucit(root), write_manifest=True)
    spec, _ = _imagenet(root)
    _rewrite_same_size(root / "datasets" / "ImageNet-R" / "2.png")
    assert len(load_train_records_checked(root, spec, policy="skip")) == 3  # size unchanged
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = load_train_records_checked(root, spec, policy="skip", verify_images="hash")
    assert [r["id"] for r in kept] == ["ImageNet-R-0", "ImageNet-R-1"]
    assert "skipped 1 bad training record" in str(caught[0].message) and "sha256" in str(caught[0].message)


def _prism(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISM_")}
    env.update(PRISM_DISABLE_PLUGIN_AUTOLOAD="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "prism", "data", "check", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_write_manifest(root, tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "prism.toml").write_text(f'[benchmark]\nid = "ucit"\nroot = "{root.as_posix()}"\n')
    result = _prism(project, "--write-manifest")
    assert result.returncode == 0, result.stderr
    assert f"image manifest: 18 image(s) recorded in {root / MANIFEST_FILE}" in result.stderr
    before = (root / MANIFEST_FILE).read_bytes()
    result = _prism(project, "--write-manifest", "--no-images")
    assert result.returncode == 2 and "cannot be combined with --no-images" in result.stderr
    (root / "datasets" / "ImageNet-R" / "1.png").unlink()
    result = _prism(project, "--write-manifest")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "2 missing image" in result.stderr and "the image manifest was not written" in result.stderr
    assert (root / MANIFEST_FILE).read_bytes() == before
