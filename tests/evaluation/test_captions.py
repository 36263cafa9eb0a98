"""COCO caption metrics: matching by id / file name, Java-free path, and the
reference numbers of pycocoevalcap's COCOEvalCap pipeline (needs Java)."""

from __future__ import annotations

import math
import random
import shutil

import pytest

from prism.errors import DataError
from prism.evaluation.metrics import coco_caption, simple_tokenize

GT = {
    "images": [
        {"id": 1, "file_name": "a/1.jpg"},
        {"id": 2, "file_name": "a/2.jpg"},
        {"id": 3, "file_name": "b/3.jpg"},
    ],
    "annotations": [
        {"image_id": 1, "caption": "A dog runs on the grass."},
        {"image_id": 1, "caption": "A brown dog is running in a field."},
        {"image_id": 2, "caption": "Two people ride bicycles down a street."},
        {"image_id": 2, "caption": "People riding bikes on the road."},
        {"image_id": 3, "caption": "A cat sleeps on a red sofa."},
        {"image_id": 3, "caption": "A cat is sleeping on the couch."},
    ],
}

PREDS = [
    {"question_id": 1, "text": "A dog running on the grass.", "metadata": {"image": "a/1.jpg"}},
    # question_id is not an image id: matched by file name
    {"question_id": 99, "text": "two people riding bikes down the street", "metadata": {"image": "x/2.jpg"}},
    {"question_id": 3, "text": "a cat sleeping on a sofa", "metadata": {}},
]

NO_JAVA = {"java": False}


def test_simple_tokenizer():
    assert simple_tokenize("A Dog, running!  Fast.") == "a dog running fast"


def test_single_image_by_hand_without_java():
    gt = {"images": [{"id": 7, "file_name": "x.jpg"}],
          "annotations": [{"image_id": 7, "caption": "a dog runs fast"}]}
    result = coco_caption([{"question_id": 7, "text": "A dog runs."}], gt=gt, options=NO_JAVA)
    # 3 of 3 unigrams match; brevity penalty exp(1 - 4/3).
    assert result.details["BLEU_1"] == pytest.approx(100 * math.exp(1 - 4 / 3), abs=1e-6)
    # ROUGE-L: LCS 3, P = 1, R = 3/4, beta = 1.2 -> (1 + b^2) P R / (R + b^2 P)
    assert result.details["ROUGE_L"] == pytest.approx(100 * 2.44 * 0.75 / (0.75 + 1.44))
    # One image: every n-gram has document frequency 1 = the number of images, so IDF is 0.
    assert result.details["CIDEr"] == 0.0
    assert "METEOR" in result.unavailable and "METEOR" not in result.details
    assert result.details["metrics_averaged"] == 6.0
    six = ["BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L", "CIDEr"]
    assert result.score == pytest.approx(sum(result.details[k] for k in six) / 6)


def test_matching_is_independent_of_order():
    base = coco_caption(PREDS, gt=GT, options=NO_JAVA)
    by_qid = {p["question_id"]: s for p, s in zip(PREDS, base.per_item)}
    shuffled = list(PREDS)
    random.Random(3).shuffle(shuffled)
    assert [p["question_id"] for p in shuffled] != [p["question_id"] for p in PREDS]
    again = coco_caption(shuffled, gt=GT, options=NO_JAVA)
    assert again.score == base.score
    assert again.details == base.details
    assert {p["question_id"]: s for p, s in zip(shuffled, again.per_item)} == by_qid
    assert base.details["matched_by_question_id"] == 2.0
    assert base.details["matched_by_file_name"] == 1.0


def test_unmatched_prediction_is_a_data_error_naming_it():
    preds = PREDS + [{"question_id": "q-404", "text": "a bird", "metadata": {"image": "zz/404.jpg"}}]
    with pytest.raises(DataError, match="q-404"):
        coco_caption(preds, gt=GT, options=NO_JAVA)


def test_two_predictions_for_one_image_is_a_data_error():
    preds = PREDS + [{"question_id": 50, "text": "a dog", "metadata": {"image": "a/1.jpg"}}]
    with pytest.raises(DataError, match="both predict"):
        coco_caption(preds, gt=GT, options=NO_JAVA)


def test_missing_gt_images_are_counted():
    result = coco_caption(PREDS[:2], gt=GT, options=NO_JAVA)
    assert result.n == 2
    assert result.details["missing_predictions"] == 1.0


def test_gt_may_be_a_path(tmp_path):
    import json

    path = tmp_path / "gt.json"
    path.write_text(json.dumps(GT))
    assert coco_caption(PREDS, gt=str(path), options=NO_JAVA).n == 3


@pytest.mark.skipif(shutil.which("java") is None, reason="PTB tokenizer and METEOR need Java")
def test_matches_cocoevalcap_reference_pipeline():
    # Expected values: pycocotools COCO + pycocoevalcap COCOEvalCap on the same
    # data (image ids 1..3), params["image_id"] = the result image ids.
    expected = {
        "BLEU_1": 94.87294799165709, "BLEU_2": 71.15471099339173, "BLEU_3": 41.96418429733128,
        "BLEU_4": 0.00514570267070403, "METEOR": 49.34230653538979,
        "ROUGE_L": 73.86935739037125, "CIDEr": 246.9188900969266,
    }
    result = coco_caption(PREDS, gt=GT)
    assert result.unavailable == {}
    for name, value in expected.items():
        assert result.details[name] == pytest.approx(value, abs=1e-9), name
    assert result.score == pytest.approx(sum(expected.values()) / 7, abs=1e-9)
    assert result.details["ptb_tokenizer"] == 1.0


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs Java")
def test_ptb_tokenizer_chatter_does_not_reach_the_terminal(capfd):
    from pycocoevalcap.tokenizer import ptbtokenizer

    result = coco_caption(PREDS, gt=GT, options={"cider_max": 10.0})
    assert result.details["ptb_tokenizer"] == 1.0  # the Java tokenizer really ran
    out, err = capfd.readouterr()  # file-descriptor level: what a child process writes too
    assert "PTBTokenizer" not in err and "tokens at" not in err and "PTBTokenizer" not in out
    assert ptbtokenizer.subprocess.__name__ == "subprocess"  # the shim is gone afterwards


def test_file_name_wins_when_question_id_names_another_image():
    # question_id 1 is an image id, but the model saw b/3.jpg: the file name decides.
    preds = [{"question_id": 1, "text": "a cat on a sofa", "metadata": {"image": "imgs/3.jpg"}}]
    result = coco_caption(preds, gt=GT, options=NO_JAVA)
    assert result.details["id_file_name_conflicts"] == 1.0
    assert result.details["matched_by_file_name"] == 1.0


def test_cider_max_clips_cider_only():
    gt = {"images": [{"id": i, "file_name": f"{i}.png"} for i in range(4)],
          "annotations": [{"image_id": i, "caption": c} for i, c in
                          enumerate(["red circle left", "blue square right", "green cross", "yellow triangle"])]}
    preds = [{"question_id": i, "text": a["caption"], "metadata": {}} for i, a in enumerate(gt["annotations"])]
    plain = coco_caption(preds, gt=gt, options={"java": False})
    clipped = coco_caption(preds, gt=gt, options={"java": False, "cider_max": 1.0})
    assert plain.details["CIDEr"] > 100.0  # exact captions: CIDEr-D far above 1
    assert clipped.details["CIDEr"] == 100.0 and clipped.details["CIDEr_unclipped"] == plain.details["CIDEr"]
    assert clipped.details["BLEU_1"] == plain.details["BLEU_1"]
    assert clipped.score <= 100.0 < plain.score
