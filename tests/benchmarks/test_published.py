"""UCIT / CoIN / TriGap definitions: task order, metrics, file discovery, sub_dataset, overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from prism.benchmarks.coin import CoINBenchmark
from prism.benchmarks.published import PublishedBenchmark, with_sub_suffix
from prism.benchmarks.trigap import TriGapBenchmark
from prism.benchmarks.ucit import UCITBenchmark
from prism.config import load_config
from prism.config.schema import BenchmarkConfig
from prism.errors import ConfigError, DataError

# From reference/benchmarks.md: the published task orders and the metric of every task.
PUBLISHED = {
    "ucit": (UCITBenchmark, [
        ("ImageNet-R", "exact_match"), ("ArxivQA", "exact_match"), ("VizWiz-Caption", "coco_caption"),
        ("IconQA", "exact_match"), ("CLEVR-Math", "exact_match"), ("Flickr30k", "coco_caption")]),
    "coin": (CoINBenchmark, [
        ("ScienceQA", "option_accuracy"), ("TextVQA", "vqa_accuracy"), ("ImageNet", "containment"),
        ("GQA", "exact_match"), ("VizWiz", "exact_match"), ("Grounding", "iou50"), ("VQAv2", "exact_match"),
        ("OCR-VQA", "exact_match")]),
    "trigap": (TriGapBenchmark, [
        ("PMC-VQA", "exact_match"), ("DocVQA", "anls"), ("ChartQA", "exact_match"), ("IconQA", "exact_match"),
        ("InfographicVQA", "anls"), ("ArxivQA", "exact_match"), ("Roadside", "exact_match"),
        ("ChemVQA", "exact_match"), ("FloodNetVQA", "exact_match"), ("CLEVR", "exact_match")]),
}

# UCIT as HiDe-LLaVA's README lays it out: folder, training file, caption ground truth.
UCIT_FILES = {
    "ImageNet-R": ("ImageNet-R", "train.json", None),
    "ArxivQA": ("ArxivQA", "train_4w.json", None),
    "VizWiz-Caption": ("VizWiz", "train.json", "val_coco_type_3000.json"),
    "IconQA": ("IconQA", "train.json", None),
    "CLEVR-Math": ("CLEVR", "train_4w.json", None),
    "Flickr30k": ("Flickr30k", "train_brief_4w.json", "test_coco_type.json"),
}


def bench(cls: type[PublishedBenchmark], root: Path, **config) -> PublishedBenchmark:
    return cls(BenchmarkConfig(id=cls.id, root=str(root), **config), root.parent)


def touch_json(path: Path, data=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([] if data is None else data), encoding="utf-8")


def write_ucit(root: Path, *, instructions: str = "instructions", sub: bool = False) -> Path:
    """A UCIT root: every task's files (empty lists) plus one tiny image per task folder."""
    suffix = "_sub" if sub else ""
    for folder, train, gt in UCIT_FILES.values():
        base = root / instructions / folder if instructions else root / folder
        touch_json(base / train.replace(".json", f"{suffix}.json"))
        touch_json(base / f"test_3000{suffix}.json")
        if gt:
            touch_json(base / gt.replace(".json", f"{suffix}.json"), {"images": [], "annotations": []})
        (root / "datasets" / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / "datasets" / folder / "0.png")
    return root


# -- what the benchmarks are ---------------------------------------------------------------
@pytest.mark.parametrize("benchmark_id", sorted(PUBLISHED))
def test_task_names_order_and_metrics_match_the_reference(benchmark_id, tmp_path):
    cls, expected = PUBLISHED[benchmark_id]
    specs = bench(cls, tmp_path / "absent").task_specs()
    assert [(s.name, s.metric) for s in specs] == expected
    assert cls.id == benchmark_id and [t.name for t in cls.tasks] == [name for name, _ in expected]
    for spec in specs:
        assert (spec.gt_file is not None) == (spec.metric == "coco_caption")
        assert (64 if spec.metric == "coco_caption" else 32) >= spec.max_new_tokens >= 16


@pytest.mark.parametrize("benchmark_id", sorted(PUBLISHED))
def test_registered_as_builtins(benchmark_id):
    from prism.plugins import registry

    cls, _ = PUBLISHED[benchmark_id]
    assert registry("benchmark").load(benchmark_id) is cls


def test_with_sub_suffix_follows_prism():
    assert with_sub_suffix("train_4w.json") == "train_4w_sub.json"
    assert with_sub_suffix("train_4w_sub.json") == "train_4w_sub.json"
    assert with_sub_suffix("images") == "images"


# -- UCIT file discovery ---------------------------------------------------------------------
def test_ucit_finds_the_hide_llava_layout(tmp_path):
    root = write_ucit(tmp_path / "UCIT")
    b = bench(UCITBenchmark, root)
    assert b.prepare() == root
    specs = {s.name: s for s in b.task_specs()}
    for name, (folder, train, gt) in UCIT_FILES.items():
        assert specs[name].train_file == f"instructions/{folder}/{train}"
        assert specs[name].test_file == f"instructions/{folder}/test_3000.json"
        assert specs[name].gt_file == (f"instructions/{folder}/{gt}" if gt else None)
        assert specs[name].image_root == "datasets"
    assert specs["VizWiz-Caption"].max_new_tokens == 64 and specs["IconQA"].max_new_tokens == 16


def test_ucit_finds_mcitlib_flat_layout_and_renamed_files(tmp_path):
    root = tmp_path / "UCIT"
    for folder in ("ImageNet-R", "ArxivQA", "VizWiz", "IconQA", "CLEVR-Math", "Flickr30k"):
        touch_json(root / folder / "train.json")
        touch_json(root / folder / "test.json")
    for folder in ("VizWiz", "Flickr30k"):
        touch_json(root / folder / "val_coco_type_3000.json", {"images": [], "annotations": []})
    (root / "datasets").mkdir()
    b = bench(UCITBenchmark, root)
    assert b.prepare() == root
    specs = {s.name: s for s in b.task_specs()}
    assert specs["CLEVR-Math"].train_file == "CLEVR-Math/train.json"
    assert specs["ArxivQA"].test_file == "ArxivQA/test.json"
    assert specs["Flickr30k"].gt_file == "Flickr30k/val_coco_type_3000.json"


def test_several_accepted_names_pick_by_documented_priority(tmp_path):
    root = write_ucit(tmp_path / "UCIT")
    flickr = root / "instructions" / "Flickr30k"
    touch_json(flickr / "val_coco_type_3000.json", {"images": [], "annotations": []})
    touch_json(root / "instructions" / "ArxivQA" / "train.json")
    touch_json(root / "ArxivQA" / "train_4w.json")  # a second, lower-priority folder
    specs = {s.name: s for s in bench(UCITBenchmark, root).task_specs()}
    assert specs["Flickr30k"].gt_file == "instructions/Flickr30k/test_coco_type.json"
    assert specs["ArxivQA"].train_file == "instructions/ArxivQA/train_4w.json"
    (flickr / "test_coco_type.json").unlink()
    specs = {s.name: s for s in bench(UCITBenchmark, root).task_specs()}
    assert specs["Flickr30k"].gt_file == "instructions/Flickr30k/val_coco_type_3000.json"


def test_hide_script_folder_names_are_accepted(tmp_path):
    root = write_ucit(tmp_path / "UCIT")
    (root / "instructions" / "VizWiz").rename(root / "instructions" / "VizWiz-caption")
    specs = {s.name: s for s in bench(UCITBenchmark, root).task_specs()}
    assert specs["VizWiz-Caption"].train_file == "instructions/VizWiz-caption/train.json"
    assert specs["VizWiz-Caption"].gt_file == "instructions/VizWiz-caption/val_coco_type_3000.json"


def test_missing_files_are_reported_all_at_once_with_expected_paths(tmp_path):
    root = tmp_path / "UCIT"
    (root / "instructions" / "ImageNet-R").mkdir(parents=True)
    touch_json(root / "instructions" / "ImageNet-R" / "train.json")
    with pytest.raises(DataError) as caught:
        bench(UCITBenchmark, root).prepare()
    message, hint = caught.value.message, caught.value.hint
    assert str(root / "instructions" / "ImageNet-R" / "test_3000.json") in message
    assert str(root / "instructions" / "ImageNet-R" / "train.json") not in message
    for folder, train, gt in UCIT_FILES.values():
        if folder != "ImageNet-R":
            assert str(root / "instructions" / folder / train) in message
        if gt:
            assert str(root / "instructions" / folder / gt) in message
    assert str(root / "datasets") in message
    assert "14 expected path(s)" in message  # 11 annotation files, 2 ground truths, the image folder
    assert "HaiyangGuo/UCIT" in hint and "datasets" in hint


def test_missing_root_is_a_data_error_with_the_download_hint(tmp_path):
    with pytest.raises(DataError, match="data folder not found") as caught:
        bench(TriGapBenchmark, tmp_path / "nowhere").prepare()
    assert "JuntaoTang/TriGap" in caught.value.hint


def test_prepare_checks_only_the_selected_tasks(tmp_path):
    root = write_ucit(tmp_path / "UCIT")
    (root / "instructions" / "Flickr30k" / "test_coco_type.json").unlink()
    assert bench(UCITBenchmark, root, tasks="0-4").prepare() == root
    with pytest.raises(DataError, match="test_coco_type.json"):
        bench(UCITBenchmark, root).prepare()


# -- sub_dataset -----------------------------------------------------------------------------
def test_ucit_sub_dataset_uses_the_sub_files_for_train_test_and_gt(tmp_path):
    root = write_ucit(tmp_path / "UCIT", sub=True)
    b = bench(UCITBenchmark, root, sub_dataset=True)
    assert b.prepare() == root
    spec = {s.name: s for s in b.task_specs()}["Flickr30k"]
    assert spec.train_file == "instructions/Flickr30k/train_brief_4w_sub.json"
    assert spec.test_file == "instructions/Flickr30k/test_3000_sub.json"
    assert spec.gt_file == "instructions/Flickr30k/test_coco_type_sub.json"


def test_ucit_sub_dataset_names_the_missing_sub_files(tmp_path):
    root = write_ucit(tmp_path / "UCIT")
    with pytest.raises(DataError) as caught:
        bench(UCITBenchmark, root, sub_dataset=True).prepare()
    assert str(root / "instructions" / "ImageNet-R" / "train_sub.json") in caught.value.message


def test_trigap_sub_dataset_only_concerns_training_files(tmp_path):
    root = tmp_path / "TriGap"
    touch_json(root / "instructions" / "DocVQA" / "train_converted.json")
    touch_json(root / "instructions" / "DocVQA" / "val_converted.json")
    docvqa = {s.name: s for s in bench(TriGapBenchmark, root).task_specs()}["DocVQA"]
    assert docvqa.train_file == "instructions/DocVQA/train_converted.json"  # the full-size file, found
    docvqa = {s.name: s for s in bench(TriGapBenchmark, root, sub_dataset=True).task_specs()}["DocVQA"]
    assert docvqa.train_file == "instructions/DocVQA/train_converted_sub.json"
    assert docvqa.test_file == "instructions/DocVQA/val_converted.json"


def test_coin_has_no_subset(tmp_path):
    with pytest.raises(ConfigError, match="no published subset"):
        bench(CoINBenchmark, tmp_path, sub_dataset=True).task_specs()


# -- CoIN and TriGap layouts -------------------------------------------------------------------
def test_coin_finds_its_layout_and_prefers_val_where_test_answers_are_hidden(tmp_path):
    root = tmp_path / "CoIN"
    for folder in ("ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCRVQA"):
        base = root / "Instructions_Original" / folder
        touch_json(base / "train.json")
        touch_json(base / "test.json")
        touch_json(base / "val.json")
    (root / "cl_dataset").mkdir()
    b = bench(CoINBenchmark, root)
    assert b.prepare() == root
    specs = {s.name: s for s in b.task_specs()}
    assert specs["TextVQA"].test_file == "Instructions_Original/TextVQA/val.json"
    assert specs["VQAv2"].test_file == "Instructions_Original/VQAv2/val.json"
    assert specs["ScienceQA"].test_file == "Instructions_Original/ScienceQA/test.json"
    assert specs["OCR-VQA"].train_file == "Instructions_Original/OCRVQA/train.json"
    assert specs["Grounding"].image_root == "cl_dataset"


def test_trigap_finds_prism_file_names(tmp_path):
    root = tmp_path / "TriGap"
    b = bench(TriGapBenchmark, root)
    for spec in b.task_specs():  # the documented names, before anything exists
        touch_json(root / spec.train_file)
        touch_json(root / spec.test_file)
    (root / "datasets").mkdir()
    assert b.prepare() == root
    specs = {s.name: s for s in b.task_specs()}
    assert specs["PMC-VQA"].train_file == "instructions/PMCVQA/train_standard_4w_sub.json"
    assert specs["InfographicVQA"].test_file == "instructions/InfographicVQA/infographicsVQA_val_converted.json"
    assert specs["CLEVR"].test_file == "instructions/CLEVR/test_3000.json"


# -- overrides ---------------------------------------------------------------------------------
def test_overrides_replace_files_root_metric_and_tokens(tmp_path):
    root = write_ucit(tmp_path / "UCIT")
    touch_json(root / "mine" / "imnet_small.json")
    overrides = {"ImageNet-R": {"train_file": "mine/imnet_small.json", "metric": "exact_match_normalized",
                                "max_new_tokens": 8, "image_root": "datasets/ImageNet-R"}}
    b = bench(UCITBenchmark, root, overrides=overrides)
    assert b.prepare() == root
    spec = b.task_specs()[0]
    assert (spec.train_file, spec.metric, spec.max_new_tokens, spec.image_root) == \
        ("mine/imnet_small.json", "exact_match_normalized", 8, "datasets/ImageNet-R")
    assert spec.test_file == "instructions/ImageNet-R/test_3000.json"  # not overridden: still discovered


def test_overridden_file_that_is_missing_is_named(tmp_path):
    root = write_ucit(tmp_path / "UCIT")
    b = bench(UCITBenchmark, root, overrides={"IconQA": {"test_file": "elsewhere/test.json"}})
    with pytest.raises(DataError, match="overrides") as caught:
        b.prepare()
    assert str(root / "elsewhere" / "test.json") in caught.value.message


def test_unknown_override_task_is_a_config_error_with_a_suggestion(tmp_path):
    b = bench(UCITBenchmark, tmp_path, overrides={"ImageNetR": {"max_new_tokens": 8}})
    with pytest.raises(ConfigError, match="did you mean 'ImageNet-R'"):
        b.task_specs()


def test_unknown_override_metric_is_a_config_error(tmp_path):
    b = bench(CoINBenchmark, tmp_path, overrides={"ScienceQA": {"metric": "exact_matc"}})
    with pytest.raises(ConfigError, match="did you mean 'exact_match'"):
        b.task_specs()


def test_overrides_from_prism_toml(tmp_path):
    (tmp_path / "prism.toml").write_text(
        '[benchmark]\nid = "ucit"\nroot = "data"\nfix_policy = "skip"\n\n'
        '[benchmark.overrides."VizWiz-Caption"]\ngt_file = "gt/vizwiz.json"\nmax_new_tokens = 48\n',
        encoding="utf-8")
    resolved = load_config(cwd=tmp_path, env={}, validate_method=False)
    cfg = resolved.config.benchmark
    assert cfg.fix_policy == "skip"
    spec = UCITBenchmark(cfg, tmp_path).task_specs()[2]
    assert (spec.gt_file, spec.max_new_tokens) == ("gt/vizwiz.json", 48)
    again = tmp_path / "again"
    again.mkdir()
    (again / "prism.toml").write_text(resolved.to_toml(), encoding="utf-8")
    assert load_config(cwd=again, env={}, validate_method=False).config.benchmark == cfg


def test_override_with_unknown_key_is_reported_with_task_and_suggestion(tmp_path):
    (tmp_path / "prism.toml").write_text(
        '[benchmark]\nid = "ucit"\n\n[benchmark.overrides.IconQA]\ntrian_file = "x.json"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(cwd=tmp_path, env={}, validate_method=False)
    assert "overrides.IconQA: unknown key 'trian_file' (did you mean 'train_file'?)" in caught.value.message
