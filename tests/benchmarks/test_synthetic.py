"""The generated benchmark: deterministic, in the real formats, unambiguous, prepared atomically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from prism.benchmarks import synthetic as syn
from prism.benchmarks.data import load_test_records, load_train_records, resolve_image
from prism.benchmarks.synthetic import SyntheticBenchmark
from prism.errors import DataError

SMALL = {"train_size": 30, "test_size": 10}


def _bench(root: Path, seed: int = 0, **sizes) -> SyntheticBenchmark:
    return SyntheticBenchmark(SimpleNamespace(id="synthetic", root=str(root), seed=seed,
                                              max_train_samples=None, max_test_samples=None),
                              root.parent, **{**SMALL, **sizes})


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = _bench(tmp_path / "a").prepare()
    b = _bench(tmp_path / "b").prepare()
    c = _bench(tmp_path / "c", seed=1).prepare()
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert set(_digest(a)) == set(_digest(c))


def test_layout_and_formats(tmp_path):
    bench = _bench(tmp_path / "syn")
    root = bench.prepare()
    specs = bench.task_specs()
    assert [s.name for s in specs] == ["colour", "shape_mc", "count", "position", "caption"]
    for spec in specs:
        train = load_train_records(root, spec)
        test = load_test_records(root, spec)
        assert len(train) == SMALL["train_size"] and len(test) == SMALL["test_size"]
        for record in train[:3] + test[:3]:
            with Image.open(resolve_image(root, spec, record["image"])) as image:
                assert image.size == (48, 48) and image.mode == "RGB"
        assert [r["question_id"] for r in test] == list(range(len(test)))
    caption = specs[-1]
    assert caption.metric == "coco_caption" and caption.gt_file
    gt = json.loads((root / caption.gt_file).read_text())
    test = load_test_records(root, caption)
    assert [im["id"] for im in gt["images"]] == [r["question_id"] for r in test]
    assert {a["image_id"]: a["caption"] for a in gt["annotations"]} == {r["question_id"]: r["answer"] for r in test}
    assert all((root / caption.image_root / im["file_name"]).is_file() for im in gt["images"])
    marker = json.loads((root / syn.MARKER_FILE).read_text())
    assert marker["seed"] == 0 and marker["generator_version"] == syn.GENERATOR_VERSION
    assert marker["train_size"] == SMALL["train_size"]


def test_answers_take_the_expected_forms(tmp_path):
    root = _bench(tmp_path / "syn", train_size=200).prepare()
    forms = {
        "colour": set(syn.COLOURS),
        "shape_mc": set(syn.OPTION_LETTERS),
        "count": {str(n) for n in range(1, syn.MAX_COUNT + 1)},
        "position": {"left", "right"},
    }
    for spec in syn.SyntheticBenchmark.tasks:
        answers = [r["conversations"][1]["value"] for r in load_train_records(root, spec)]
        if spec.name in forms:
            assert set(answers) == forms[spec.name], spec.name  # every class occurs, nothing else
        else:
            assert all(len(a.split()) == 6 and " next to " in a for a in answers)


def test_each_scene_has_one_answer():
    """Targets are functions of the scene and the scenes avoid ambiguity (distinct cells, sides)."""
    import random

    rng = random.Random(0)
    for task in syn.TASKS:
        for _ in range(200):
            scene = task.make_scene(rng)
            cells = [(it.col, it.row) for it in scene.items]
            assert len(set(cells)) == len(cells)
            if task.spec.name == "position":
                assert scene.items[0].col in (0, syn.GRID - 1)
            if task.spec.name == "caption":
                assert sorted(it.col for it in scene.items) == [0, syn.GRID - 1]
            assert task.answer(scene) == task.answer(scene)


def test_prepare_reuses_a_matching_folder_and_regenerates_otherwise(tmp_path):
    root = tmp_path / "syn"
    _bench(root).prepare()
    marker = root / syn.MARKER_FILE
    stamp = marker.stat().st_mtime_ns
    assert _bench(root).is_prepared()
    _bench(root).prepare()
    assert marker.stat().st_mtime_ns == stamp  # nothing rewritten
    before = _digest(root)
    _bench(root, seed=3).prepare()
    assert json.loads(marker.read_text())["seed"] == 3 and _digest(root) != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_prepare_never_deletes_a_foreign_folder(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "mine.txt").write_text("precious")
    with pytest.raises(DataError, match="not a prism synthetic"):
        _bench(root).prepare()
    assert (root / "mine.txt").read_text() == "precious"


def test_a_link_to_a_folder_that_is_gone_is_named_not_replaced(tmp_path):
    root = tmp_path / "data"
    root.symlink_to(tmp_path / "moved-away", target_is_directory=True)
    with pytest.raises(DataError, match="symbolic link to .*moved-away, which does not exist"):
        _bench(root).prepare()
    assert root.is_symlink()


def test_relative_root_is_under_the_project(tmp_path):
    bench = SyntheticBenchmark(SimpleNamespace(root="data/synthetic", seed=0), tmp_path, **SMALL)
    assert bench.prepare() == tmp_path / "data" / "synthetic"


def test_default_sizes(tmp_path):
    bench = SyntheticBenchmark(SimpleNamespace(root=str(tmp_path / "full"), seed=0), tmp_path)
    root = bench.prepare()
    for spec in bench.task_specs():
        assert len(load_train_records(root, spec)) == syn.DEFAULT_TRAIN_SIZE
        assert len(load_test_records(root, spec)) == syn.DEFAULT_TEST_SIZE


def test_every_benchmark_word_is_in_the_shipped_vocabulary(tmp_path):
    from transformers import AutoTokenizer

    from prism.backbones.llava import assets_dir

    tokenizer = AutoTokenizer.from_pretrained(assets_dir() / "tiny-llava")
    root = _bench(tmp_path / "syn").prepare()
    for spec in syn.SyntheticBenchmark.tasks:
        for record in load_test_records(root, spec):
            ids = tokenizer(record["text"] + " " + record["answer"])["input_ids"]
            assert tokenizer.unk_token_id not in ids, record
