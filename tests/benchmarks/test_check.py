"""check_benchmark collects every data problem; load_train_records_checked applies the fix policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from prism.benchmarks.base import TaskSpec
from prism.benchmarks.check import (
    CheckReport,
    SkippedRecordsWarning,
    check_benchmark,
    check_summary_error,
    load_train_records_checked,
)
from prism.benchmarks.ucit import UCITBenchmark
from prism.config.schema import BenchmarkConfig
from prism.errors import ConfigError, DataError
from tests.benchmarks.bad_images import bomb_png

# UCIT in HiDe-LLaVA's layout: task -> (folder, training file, caption ground truth)
UCIT_FILES = {
    "ImageNet-R": ("ImageNet-R", "train.json", None),
    "ArxivQA": ("ArxivQA", "train_4w.json", None),
    "VizWiz-Caption": ("VizWiz", "train.json", "val_coco_type_3000.json"),
    "IconQA": ("IconQA", "train.json", None),
    "CLEVR-Math": ("CLEVR", "train_4w.json", None),
    "Flickr30k": ("Flickr30k", "train_brief_4w.json", "test_coco_type.json"),
}
N = 3  # records (and images) per split and task


def conversation(image: str | None, answer: str = "a") -> dict:
    turns = [{"from": "human", "value": ("<image>\n" if image else "") + "What is it?"},
             {"from": "gpt", "value": answer}]
    return {"image": image, "conversations": turns} if image else {"conversations": turns}


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_ucit(root: Path) -> Path:
    """A clean UCIT root: N train and N test records per task, each with its own tiny PNG."""
    for folder, train, gt in UCIT_FILES.values():
        images = root / "datasets" / folder
        images.mkdir(parents=True)
        for i in range(N):
            Image.new("RGB", (6, 5), (40 * i, 90, 200)).save(images / f"{i}.png")
        write_json(root / "instructions" / folder / train,
                   [{"id": f"{folder}-{i}", **conversation(f"{folder}/{i}.png")} for i in range(N)])
        write_json(root / "instructions" / folder / "test_3000.json",
                   [{"question_id": i, "image": f"{folder}/{i}.png", "text": "What is it?", "answer": "a"}
                    for i in range(N)])
        if gt:
            write_json(root / "instructions" / folder / gt, {
                "images": [{"id": i, "file_name": f"{i}.png"} for i in range(N)],
                "annotations": [{"id": i, "image_id": i, "caption": "a caption"} for i in range(N)]})
    return root


def ucit(root: Path, **config) -> UCITBenchmark:
    return UCITBenchmark(BenchmarkConfig(id="ucit", root=str(root), **config), root.parent)


def train_path(root: Path, task: str) -> Path:
    folder, train, _ = UCIT_FILES[task]
    return root / "instructions" / folder / train


def add_bad_training_records(root: Path) -> Path:
    """ImageNet-R gets one of each: missing image, corrupt image, escaping path, malformed record."""
    path = train_path(root, "ImageNet-R")
    records = json.loads(path.read_text())
    (root / "datasets" / "ImageNet-R" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records += [
        {"id": "bad-missing", **conversation("ImageNet-R/missing.png")},  # index 3
        {"id": "bad-corrupt", **conversation("ImageNet-R/broken.png")},  # index 4
        {"id": "bad-escape", **conversation("../../outside.png")},  # index 5
        {"id": "bad-malformed", "image": "ImageNet-R/0.png", "conversations": [{"from": "gpt", "value": "a"}]},
    ]
    write_json(path, records)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_ucit(tmp_path / "UCIT")


# -- check_benchmark ---------------------------------------------------------------------------
def test_clean_data_gives_an_ok_report(root):
    report = check_benchmark(ucit(root))
    assert report.ok and report.problem_total == 0
    assert [t.name for t in report.tasks] == list(UCIT_FILES)
    assert all((t.train_records, t.test_records) == (N, N) for t in report.tasks)
    assert report.tasks[2].files["gt"].endswith("val_coco_type_3000.json")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["problems"] == {} and "no problems" in data["summary"]


def test_one_report_names_every_problem(root):
    path = add_bad_training_records(root)
    report = check_benchmark(ucit(root))
    assert not report.ok
    assert dict(report.counts) == {"missing_image": 1, "corrupt_image": 1, "escaping_image": 1,
                                   "malformed_record": 1}
    found = {kind: problems[0] for kind, problems in report.examples.items()}
    assert (found["missing_image"].index, found["corrupt_image"].index, found["escaping_image"].index,
            found["malformed_record"].index) == (3, 4, 5, 6)
    assert all(p.file == str(path) and p.task == "ImageNet-R" and p.split == "train" for p in found.values())
    assert "missing.png" in found["missing_image"].detail
    assert "broken.png" in found["corrupt_image"].detail
    assert "escapes the image root" in found["escaping_image"].detail
    assert "conversations[0]" in found["malformed_record"].detail
    assert report.tasks[0].problems == report.counts and report.tasks[1].problems == {}
    text = _rendered(report)
    for needle in ("record 3", "record 4", "record 5", "record 6", "missing.png", "broken.png", "outside.png"):
        assert needle in text


def test_duplicate_ids_in_train_and_test(root):
    path = train_path(root, "IconQA")
    records = json.loads(path.read_text())
    write_json(path, records + [dict(records[0])])
    test = root / "instructions" / "IconQA" / "test_3000.json"
    write_json(test, json.loads(test.read_text()) + [{"question_id": 1, "text": "q", "answer": "a"}])
    report = check_benchmark(ucit(root))
    assert report.counts == {"duplicate_id": 2}
    lines = sorted(p.line() for p in report.examples["duplicate_id"])
    assert "record 3: id 'IconQA-0' repeats record 0" in lines[1] + lines[0]
    assert any("question_id 1 repeats record 1" in line for line in lines)


def test_caption_ground_truth_must_cover_every_test_question(root):
    gt = root / "instructions" / "VizWiz" / "val_coco_type_3000.json"
    data = json.loads(gt.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in (1, 2)]  # 2 loses its captions
    data["images"] = [i for i in data["images"] if i["id"] != 1]  # question 1 matches nothing
    write_json(gt, data)
    report = check_benchmark(ucit(root))
    assert report.counts == {"missing_gt": 2}
    details = sorted(p.detail for p in report.examples["missing_gt"])
    assert details[0].startswith("question_id 1: neither the question_id nor the image file name '1.png'")
    assert details[1] == "question_id 2: ground-truth image 2 has no caption in val_coco_type_3000.json"
    assert report.tasks[2].problems == {"missing_gt": 2}


def test_gt_matched_by_file_name_when_ids_differ(root):
    gt = root / "instructions" / "Flickr30k" / "test_coco_type.json"
    write_json(gt, {"images": [{"id": 100 + i, "file_name": f"flickr/{i}.png"} for i in range(N)],
                    "annotations": [{"image_id": 100 + i, "caption": "c"} for i in range(N)]})
    assert check_benchmark(ucit(root), tasks=["Flickr30k"]).ok


def test_invalid_and_missing_files_do_not_stop_the_check(root):
    (root / "instructions" / "VizWiz" / "val_coco_type_3000.json").write_text('{"images": 3}')
    train_path(root, "ArxivQA").write_text("{not json")
    (root / "instructions" / "IconQA" / "test_3000.json").unlink()
    add_bad_training_records(root)
    report = check_benchmark(ucit(root))
    assert report.counts["invalid_gt"] == 1 and report.counts["unreadable_file"] == 1
    assert report.counts["missing_file"] == 1 and report.counts["missing_image"] == 1
    missing = report.examples["missing_file"][0]
    assert (missing.task, missing.split) == ("IconQA", "test")
    assert "also accepted: instructions/IconQA/test.json" in missing.detail
    assert report.tasks[4].train_records == N  # CLEVR-Math, after the broken tasks, was still checked


def test_examples_are_capped_but_counts_are_complete(root):
    path = train_path(root, "CLEVR-Math")
    write_json(path, [{"id": str(i), **conversation(f"CLEVR/none_{i}.png")} for i in range(25)])
    report = check_benchmark(ucit(root), max_examples=4)
    assert report.counts["missing_image"] == 25 and len(report.examples["missing_image"]) == 4
    assert "and 21 more" in _rendered(report)


def test_no_images_checks_annotations_only(root):
    add_bad_training_records(root)
    report = check_benchmark(ucit(root), check_images=False)
    assert report.counts == {"escaping_image": 1, "malformed_record": 1}
    assert not report.images_checked and "images not checked" in report.summary()


def test_task_selection_and_missing_root(tmp_path, root):
    add_bad_training_records(root)
    assert check_benchmark(ucit(root), tasks="1-5").ok
    assert [t.name for t in check_benchmark(ucit(root, tasks=["IconQA"])).tasks] == ["IconQA"]
    report = check_benchmark(ucit(tmp_path / "nowhere"))
    assert report.counts == {"missing_file": 1} and "data folder not found" in report.summary() + \
        report.examples["missing_file"][0].detail


def test_the_generated_synthetic_benchmark_is_clean(tmp_path):
    from prism.benchmarks.synthetic import SyntheticBenchmark

    bench = SyntheticBenchmark(BenchmarkConfig(root=str(tmp_path / "syn")), tmp_path, train_size=4, test_size=3)
    bench.prepare()
    report = check_benchmark(bench)
    assert report.ok, report.summary()
    assert sum(t.train_records for t in report.tasks) == 4 * len(report.tasks)


def test_summary_error_suggests_skip_only_for_record_problems(root):
    add_bad_training_records(root)
    error = check_summary_error(check_benchmark(ucit(root)))
    assert isinstance(error, DataError) and "4 problem(s)" in error.message and "fix_policy" in error.hint
    (root / "instructions" / "IconQA" / "test_3000.json").unlink()
    assert "fix_policy" not in check_summary_error(check_benchmark(ucit(root), tasks=["IconQA"])).hint


def _rendered(report: CheckReport) -> str:
    console = Console(record=True, width=300, force_terminal=False)
    report.render(console)
    return console.export_text()


# -- the fix policy ------------------------------------------------------------------------------
def spec_of(root: Path, task: str) -> TaskSpec:
    return next(s for s in ucit(root).task_specs() if s.name == task)


def test_error_policy_names_file_and_record_of_the_first_bad_record(root):
    path = add_bad_training_records(root)
    spec = spec_of(root, "ImageNet-R")
    with pytest.raises(DataError) as caught:
        load_train_records_checked(root, spec, None, "error")
    assert caught.value.message == f"{path}: record 6: conversations[0] is from 'gpt', expected 'human' " \
                                   "(turns alternate human/gpt, starting with human)"
    records = json.loads(path.read_text())
    write_json(path, records[:6])  # without the malformed record, the image problems come first
    with pytest.raises(DataError, match=rf"{path}: record 3: image not found") as caught:
        load_train_records_checked(root, spec, None, "error")
    assert "fix_policy" in caught.value.hint
    assert len(load_train_records_checked(root, spec, 3, "error")) == 3  # the bad records lie beyond the cap


def test_skip_policy_drops_bad_records_with_one_warning(root):
    add_bad_training_records(root)
    spec = spec_of(root, "ImageNet-R")
    with pytest.warns(SkippedRecordsWarning) as caught:
        records = load_train_records_checked(root, spec, None, "skip")
    assert [r["id"] for r in records] == ["ImageNet-R-0", "ImageNet-R-1", "ImageNet-R-2"]
    assert len(caught) == 1
    line = str(caught[0].message)
    assert "\n" not in line and "skipped 4 bad training record(s)" in line
    assert "record 3: image not found" in line and "record 4: cannot decode image" in line
    assert "record 5:" in line and "record 6" not in line and line.endswith("; ...")


def test_skip_policy_reads_on_until_max_samples_good_records(root):
    path = train_path(root, "IconQA")
    bad = [{"id": f"bad{i}", **conversation("IconQA/absent.png")} for i in range(2)]
    write_json(path, bad + json.loads(path.read_text()))
    lines: list[str] = []
    records = load_train_records_checked(root, spec_of(root, "IconQA"), 2, "skip", warn=lines.append)
    assert [r["id"] for r in records] == ["IconQA-0", "IconQA-1"]
    assert len(lines) == 1 and "skipped 2 bad training record(s)" in lines[0]
    lines.clear()
    assert len(load_train_records_checked(root, spec_of(root, "ArxivQA"), None, "skip", warn=lines.append)) == N
    assert lines == []


def test_skip_policy_with_nothing_left_and_bad_arguments(root):
    path = train_path(root, "IconQA")
    write_json(path, [{"id": "x", **conversation("IconQA/absent.png")}])
    spec = spec_of(root, "IconQA")
    with pytest.raises(DataError, match="no usable training record"):
        load_train_records_checked(root, spec, None, "skip", warn=lambda line: None)
    with pytest.raises(ConfigError, match="fix_policy"):
        load_train_records_checked(root, spec, None, "ignore")
    with pytest.raises(ConfigError, match="at least 1"):
        load_train_records_checked(root, spec, 0, "skip")
    path.unlink()
    with pytest.raises(DataError, match="file not found"):
        load_train_records_checked(root, spec, None, "skip")


# -- symlinks and decompression bombs ----------------------------------------------------------
def _link_out_and_bomb(root: Path) -> Path:
    """IconQA gets a symlink leading out of its image folder (index 3), a link to another of its
    own files (index 4, fine) and a PNG whose header claims 30000x30000 (index 5)."""
    images = root / "datasets" / "IconQA"
    Image.new("RGB", (4, 4)).save(root / "outside.png")
    (images / "out.png").symlink_to(root / "outside.png")
    (images / "alias.png").symlink_to(images / "0.png")
    bomb_png(images / "bomb.png")
    path = train_path(root, "IconQA")
    write_json(path, json.loads(path.read_text()) + [
        {"id": "link-out", **conversation("IconQA/out.png")},
        {"id": "link-in", **conversation("IconQA/alias.png")},
        {"id": "bomb", **conversation("IconQA/bomb.png")}])
    return path


@pytest.mark.parametrize("check_images", [True, False])
def test_check_reports_a_symlink_leading_out_as_outside_the_root(root, check_images):
    path = _link_out_and_bomb(root)
    report = check_benchmark(ucit(root), tasks=["IconQA"], check_images=check_images)
    outside = report.examples["escaping_image"]
    assert report.counts["escaping_image"] == 1 and (outside[0].file, outside[0].index) == (str(path), 3)
    assert "leads through a symlink to" in outside[0].detail and "outside.png" in outside[0].detail
    if check_images:  # the bomb is undecodable; the link inside the folder is no problem
        assert dict(report.counts) == {"escaping_image": 1, "corrupt_image": 1}
        assert report.examples["corrupt_image"][0].index == 5
        assert "DecompressionBombError" in report.examples["corrupt_image"][0].detail
    else:
        assert dict(report.counts) == {"escaping_image": 1}


def test_training_refuses_a_symlink_leading_out_and_skip_drops_it(root):
    path = _link_out_and_bomb(root)
    spec = spec_of(root, "IconQA")
    # the engine's call under fix_policy = "error": images are decoded later, when encoded
    with pytest.raises(DataError) as caught:
        load_train_records_checked(root, spec, None, "error", check_images=False)
    assert caught.value.message.startswith(f"{path}: record 3: image path 'IconQA/out.png'")
    assert "outside the image root" in caught.value.message
    lines: list[str] = []
    records = load_train_records_checked(root, spec, None, "skip", warn=lines.append)
    assert [r["id"] for r in records] == ["IconQA-0", "IconQA-1", "IconQA-2", "link-in"]
    assert "skipped 2 bad training record(s)" in lines[0] and "DecompressionBombError" in lines[0]
