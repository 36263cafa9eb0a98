"""`prism eval score` in a real process: a file without a single prediction is bad input, not 0.00;
`--gt` reads the official ground truth in the layouts the benchmarks publish."""

from __future__ import annotations

import json
import shutil

import pytest

from prism.evaluation.ground_truth import TEST_JSON, TEXTVQA, VQAV2
from tests.conftest import run_cli
from tests.evaluation.test_ground_truth import (
    ANLS_EXPECTED,
    ANLS_GT,
    ANLS_PREDS,
    CAPTION_GT,
    CAPTIONS_BY_ID,
    GROUNDING_GT,
    GROUNDING_PREDS,
    TEXT_EXPECTED,
    TEXT_GT,
    TEXT_PREDS,
    VQA_EXPECTED,
    VQA_PREDS,
    hide_style_caption_predictions,
    shuffled,
    textvqa_layout,
    vqav2_layout,
)

GOOD = "".join(json.dumps({"question_id": i, "text": text, "answer": "red"}) + "\n"
               for i, text in enumerate(["red", "blue"]))


@pytest.mark.parametrize("content", ["", "\n \n\n", '{"question_id": 1, "text": "re'],
                         ids=["empty", "blank-lines", "only-a-cut-off-line"])
def test_scoring_a_file_without_predictions_fails_with_one_message(tmp_path, content):
    path = tmp_path / "predictions.jsonl"
    path.write_text(content, encoding="utf-8")
    result = run_cli(["eval", "score", str(path), "--metric", "exact_match", "--json"], cwd=tmp_path)
    assert result.code == 1, result
    assert result.stdout == "" and "Traceback" not in result.stderr and "over 0" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: prediction file {path} holds no prediction"
                      + (": its only line (1) is cut off" if content.startswith("{")
                         else " (it is empty or holds only blank lines)")]
    assert "hint:" in result.stderr and "question_id and text" in result.stderr
    assert path.read_text(encoding="utf-8") == content


def test_a_file_with_predictions_still_scores(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(GOOD, encoding="utf-8")
    result = run_cli(["eval", "score", str(path), "--metric", "exact_match", "--json"], cwd=tmp_path)
    assert result.code == 0, str(result)
    assert json.loads(result.stdout)["score"] == 50.0 and json.loads(result.stdout)["n"] == 2


# -- --gt: the official ground truth, in the layouts the benchmarks publish ---------------------------
# Hand-checked cases and their working are in tests/evaluation/test_ground_truth.py.

def _files(tmp_path, gt_data, predictions):
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt_data), encoding="utf-8")
    pred_path = tmp_path / "predictions.jsonl"
    pred_path.write_text("".join(json.dumps(p) + "\n" for p in shuffled(predictions)), encoding="utf-8")
    return pred_path, gt_path


def _score(tmp_path, pred_path, gt_path, metric, *extra):
    return run_cli(["eval", "score", str(pred_path), "--metric", metric, "--gt", str(gt_path), *extra],
                   cwd=tmp_path, env={"COLUMNS": "400"})


@pytest.mark.parametrize("layout", ["textvqa", "vqav2"])
def test_vqa_accuracy_with_an_annotation_file_is_m4cs_value(tmp_path, layout):
    data = textvqa_layout() if layout == "textvqa" else vqav2_layout()
    pred_path, gt_path = _files(tmp_path, data, VQA_PREDS)
    result = _score(tmp_path, pred_path, gt_path, "vqa_accuracy", "--json")
    assert result.code == 0, result  # was: "expected a COCO object with 'images' and 'annotations'"
    out = json.loads(result.stdout)
    assert out["score"] == pytest.approx(VQA_EXPECTED) and out["n"] == 3
    assert out["ground_truth"] == {"file": str(gt_path), "layout": TEXTVQA if layout == "textvqa" else VQAV2,
                                   "predictions_without_gt": [99], "gt_without_prediction": [4]}


def test_the_human_output_counts_what_did_not_join(tmp_path):
    pred_path, gt_path = _files(tmp_path, textvqa_layout(), VQA_PREDS)
    result = _score(tmp_path, pred_path, gt_path, "vqa_accuracy")
    assert result.code == 0, str(result)
    lines = result.stderr.splitlines()
    assert lines[0] == "vqa_accuracy: 83.33 over 3 predictions"
    assert lines[1] == (f"ground truth: {gt_path} (TextVQA annotations); 1 predictions without ground truth, "
                        "1 ground-truth questions without prediction")
    assert lines[2] == "  not scored (no ground truth): question_id 99"


@pytest.mark.parametrize("metric, gt_data, predictions, expected", [
    ("anls", ANLS_GT, ANLS_PREDS, ANLS_EXPECTED),
    ("iou50", GROUNDING_GT, GROUNDING_PREDS, 50.0),
    ("exact_match_normalized", TEXT_GT, TEXT_PREDS, TEXT_EXPECTED["exact_match_normalized"]),
])
def test_item_metrics_with_a_test_json(tmp_path, metric, gt_data, predictions, expected):
    pred_path, gt_path = _files(tmp_path, gt_data, predictions)
    result = _score(tmp_path, pred_path, gt_path, metric, "--json")
    assert result.code == 0, str(result)
    assert json.loads(result.stdout)["score"] == pytest.approx(expected)
    assert json.loads(result.stdout)["ground_truth"]["layout"] == TEST_JSON


@pytest.mark.skipif(shutil.which("java") is None, reason="the reference pipeline's PTB tokenizer and METEOR need Java")
def test_captions_named_by_file_stem_score_as_cocoevalcap_on_the_aligned_results(tmp_path, monkeypatch):
    import copy

    import pycocoevalcap.eval as cocoeval
    from pycocotools.coco import COCO

    pred_path, gt_path = _files(tmp_path, CAPTION_GT, hide_style_caption_predictions())
    result = _score(tmp_path, pred_path, gt_path, "coco_caption", "--json")
    assert result.code == 0, result  # was: every prediction "matches no ground-truth image"
    out = json.loads(result.stdout)

    class NoSpice:  # SPICE is not one of the seven metrics, and needs a Stanford CoreNLP download
        def method(self):
            return "SPICE"

        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(res)

    monkeypatch.setattr(cocoeval, "Spice", NoSpice)
    coco = COCO()
    coco.dataset = copy.deepcopy(CAPTION_GT)
    coco.createIndex()
    results = coco.loadRes([{"image_id": i, "caption": c} for i, c in CAPTIONS_BY_ID.items()])
    reference = cocoeval.COCOEvalCap(coco, results)
    reference.params["image_id"] = results.getImgIds()  # the images that have a result
    reference.evaluate()
    names = {"BLEU_1": "Bleu_1", "BLEU_2": "Bleu_2", "BLEU_3": "Bleu_3", "BLEU_4": "Bleu_4",
             "METEOR": "METEOR", "ROUGE_L": "ROUGE_L", "CIDEr": "CIDEr"}
    for ours, theirs in names.items():
        assert out["details"][ours] == pytest.approx(100 * reference.eval[theirs], abs=1e-9), ours
    assert out["score"] == pytest.approx(sum(100 * reference.eval[t] for t in names.values()) / 7, abs=1e-9)
    assert out["n"] == 3 and out["ground_truth"]["predictions_without_gt"] == ["VizWiz_val_00000099"]
    assert out["ground_truth"]["gt_without_prediction"] == [20]


def test_a_file_in_no_known_layout_is_one_error_naming_it(tmp_path):
    pred_path, gt_path = _files(tmp_path, {"info": {}, "questions": []}, VQA_PREDS)
    before = {p: p.read_bytes() for p in (pred_path, gt_path)}
    result = _score(tmp_path, pred_path, gt_path, "vqa_accuracy")
    assert result.code == 1, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: ground truth {gt_path} is in no layout prism reads: it is a JSON object with "
                      "keys 'info', 'questions'"]
    assert "TextVQA annotations" in result.stderr and "Traceback" not in result.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_caption_ground_truth_for_an_answer_metric_is_a_usage_error(tmp_path):
    # Used to score 100.00, silently, against the predictions' own 'answer' copies.
    predictions = [{"question_id": i, "text": c, "answer": c} for i, c in CAPTIONS_BY_ID.items()]
    pred_path, gt_path = _files(tmp_path, CAPTION_GT, predictions)
    result = _score(tmp_path, pred_path, gt_path, "exact_match")
    assert result.code == 2, result
    assert "exact_match compares answers by question_id" in result.stderr and result.stdout == ""
