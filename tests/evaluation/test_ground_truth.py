"""Ground truth in the layouts the benchmarks publish, joined to predictions by id, for every metric.

Each expected score is worked out by hand in the comments, following the reference evaluator
named in reference/benchmarks.md (m4c for VQA accuracy, lmms-eval for ANLS, CoIN for IoU@0.5).
"""

from __future__ import annotations

import json
import random

import pytest

from prism import builtin_plugin
from prism.errors import DataError, UsageError
from prism.evaluation import metrics
from prism.evaluation.ground_truth import (
    COCO,
    TEST_JSON,
    TEXTVQA,
    VQAV2,
    gt_kind,
    ground_truth_from_data,
    join_predictions,
    load_ground_truth,
    score_against,
)


def pred(qid, text, **extra):
    return {"question_id": qid, "text": text, **extra}


def shuffled(records, seed=7):
    out = list(records)
    random.Random(seed).shuffle(out)
    assert [r["question_id"] for r in out] != [r["question_id"] for r in records]
    return out


# --------------------------------------------------------------------------- the text metrics

TEXT_GT = [
    {"question_id": 1, "text": "q", "answer": "Golden Retriever"},
    {"question_id": 2, "text": "q", "answer": "the dog"},
    {"question_id": "3", "text": "q", "answer": ["two", "2"]},
    {"question_id": 4, "text": "q", "answer": "cat"},
    {"question_id": 5, "text": "q", "answer": "nobody predicted this"},
]
TEXT_PREDS = [
    pred(1, " golden retriever "),
    pred(2, "dog"),
    pred(3, "Two."),  # an integer id joins the ground truth's "3"
    pred(4, "a black dog"),
    # No ground truth for 50: its own 'answer' copy would make it correct; it must not be scored.
    pred(50, "x", answer="x"),
]

# per question:                 1    2    3    4
# exact_match (strip, upper):   1    0    0    0   ("TWO." != "TWO", "DOG" != "THE DOG")   -> 25
# normalised (VQA processor):   1    1    1    0   (article dropped; "two." -> "two" -> "2") -> 75
# containment (lower-cased):    1    1    1    0   ("dog" in "the dog", "two" in "two.")      -> 75
TEXT_EXPECTED = {"exact_match": 25.0, "exact_match_normalized": 75.0, "containment": 75.0}


@pytest.mark.parametrize("metric_id, expected", sorted(TEXT_EXPECTED.items()))
def test_text_metrics_against_a_test_json(metric_id, expected):
    gt = ground_truth_from_data(TEXT_GT, source="test.json")
    assert gt.layout == TEST_JSON
    metric = getattr(metrics, metric_id)
    for predictions in (TEXT_PREDS, shuffled(TEXT_PREDS)):
        result, join = score_against(metric, predictions, gt, metric_id=metric_id)
        assert result.score == expected and result.n == 4
        assert join.without_gt == [50] and join.without_prediction == [5]
        assert result.details["predictions_without_gt"] == 1.0
        assert result.details["gt_without_prediction"] == 1.0


def test_option_accuracy_against_a_test_json():
    gt = ground_truth_from_data([{"question_id": i, "answer": a} for i, a in enumerate("BCA")], source="t")
    predictions = [pred(0, "(B) cat"), pred(1, "The answer is A"), pred(2, "a")]
    # B = B, A != C, "a" reads as the letter A = A  -> 2 of 3
    result, _ = score_against(metrics.option_accuracy, shuffled(predictions), gt)
    assert result.score == pytest.approx(200 / 3) and result.n == 3


def test_the_ground_truth_wins_over_the_prediction_files_answer_copy():
    gt = ground_truth_from_data([{"question_id": 1, "answer": "cat"}], source="t")
    result, join = score_against(metrics.exact_match, [pred(1, "dog", answer="dog")], gt)
    assert result.score == 0.0 and join.predictions[0]["answer"] == "cat"


# --------------------------------------------------------------------------- VQA accuracy

VQA_ANSWERS = {
    1: ["red"] * 3 + ["blue"] * 7,
    2: ["2", "two"] + ["three"] * 8,
    3: ["dog"] * 10,
    4: ["never asked"] * 10,
}
VQA_PREDS = [pred(1, "red"), pred(2, "Two"), pred("3", "the dog."), pred(99, "red")]
# m4c: normalise everything, then average min(#matches among the other 9 / 3, 1) over the 10
# leave-one-out subsets.
#   q1 "red": 3 of 10 match. Leaving out a "red" (3 subsets): 2 matches -> 2/3; else (7): 1.
#             (3 * 2/3 + 7) / 10 = 0.9
#   q2 "Two" -> "2"; "two" -> "2" too, so 2 of 10 match. Leaving one of them out (2): 1/3;
#             else (8): 2/3.  (2/3 + 16/3) / 10 = 0.6
#   q3 "the dog." -> "dog": 10 of 10 -> 1.0
# VQA accuracy = (0.9 + 0.6 + 1.0) / 3 = 83.33 %; 99 has no ground truth, 4 no prediction.
VQA_EXPECTED = 100 * (0.9 + 0.6 + 1.0) / 3


def textvqa_layout():
    return {"dataset_name": "textvqa", "data": [{"question_id": q, "image_id": f"img{q}", "answers": a}
                                                for q, a in VQA_ANSWERS.items()]}


def vqav2_layout():
    return {"info": {}, "annotations": [
        {"question_id": q, "image_id": q, "multiple_choice_answer": a[0],
         "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": i + 1} for i, x in enumerate(a)]}
        for q, a in VQA_ANSWERS.items()]}


@pytest.mark.parametrize("data, layout", [(textvqa_layout(), TEXTVQA), (vqav2_layout(), VQAV2)],
                         ids=["textvqa", "vqav2"])
def test_vqa_accuracy_against_annotation_files(data, layout):
    gt = ground_truth_from_data(data, source="annotations.json")
    assert gt.layout == layout and gt.answers["1"] == VQA_ANSWERS[1]
    for predictions in (VQA_PREDS, shuffled(VQA_PREDS)):
        result, join = score_against(metrics.vqa_accuracy, predictions, gt)
        assert result.score == pytest.approx(VQA_EXPECTED) and result.n == 3
        assert join.without_gt == [99] and join.without_prediction == [4]


# --------------------------------------------------------------------------- ANLS

ANLS_GT = [
    {"question_id": "d1", "answer": "hello world"},
    {"question_id": "d2", "answer": ["abcdefghij"]},
    {"question_id": "d3", "answer": "cat"},
    {"question_id": "d4", "answer": ["abcd", "xyz"]},
    {"question_id": "d5", "answer": "ab"},
]
ANLS_PREDS = [pred("d1", "Hello  World"), pred("d2", "abcdefghiX"), pred("d3", "dog"), pred("d4", "abce"),
              pred("d5", "ac")]
# lmms-eval ANLS: lower-case, strip, collapse spaces; distance / longer raw length; 1 - min over
# the answers; below 0.5 -> 0.
#   d1: equal after normalising -> 1.0
#   d2: one substitution over 10 characters -> 0.9
#   d3: "cat" vs "dog": 3 / 3 -> 0.0
#   d4: "abce" vs "abcd" 1/4, vs "xyz" 4/4 -> 1 - 0.25 = 0.75
#   d5: "ac" vs "ab" 1/2 -> exactly 0.5, which is kept
# ANLS = (1 + 0.9 + 0 + 0.75 + 0.5) / 5 = 63 %
ANLS_EXPECTED = 63.0


def test_anls_against_a_test_json():
    gt = ground_truth_from_data(ANLS_GT, source="test.json")
    result, join = score_against(metrics.anls, shuffled(ANLS_PREDS), gt)
    assert result.score == pytest.approx(ANLS_EXPECTED) and result.n == 5
    assert join.without_gt == [] and join.without_prediction == []


# --------------------------------------------------------------------------- IoU@0.5

GROUNDING_GT = [
    {"question_id": 1, "text": "the man", "answer_bbox": "[0.41, 0.06, 0.61, 0.26]", "size": [640, 480]},
    {"question_id": 2, "text": "the car", "answer": "a red car", "answer_bbox": "[0.1, 0.1, 0.5, 0.5]",
     "size": [500, 375]},
    {"question_id": 3, "text": "the sky", "answer_bbox": [0, 0, 1, 1], "size": [100, 100]},
    {"question_id": 4, "text": "the dog", "answer_bbox": "[[0.2, 0.2, 0.4, 0.4]]", "size": [300, 200]},
]
GROUNDING_PREDS = [
    pred(1, "[[0.41, 0.06, 0.61, 0.26]]"),  # the box in extra brackets: IoU 1 -> hit
    pred(2, "[0.1, 0.1, 0.5, 0.78]"),  # inter 0.4*0.4 = 0.16, union 0.16 + 0.272 - 0.16 -> 0.588 -> hit
    pred(3, "[0, 0, 0.5, 1]"),  # IoU exactly 0.5 -> miss
    pred(4, "The dog on the left."),  # no box -> miss, still in the denominator
]
# 2 hits of 4 -> 50 %. size does not matter: CoIN multiplies both boxes by max(size).


def test_iou50_against_a_grounding_test_json():
    gt = ground_truth_from_data(GROUNDING_GT, source="test.json")
    assert gt.answers["2"] == "[0.1, 0.1, 0.5, 0.5]"  # answer_bbox is what is scored, not answer
    result, _ = score_against(metrics.iou50, shuffled(GROUNDING_PREDS), gt)
    assert result.score == 50.0 and result.n == 4 and result.details["unparsed"] == 1.0


# --------------------------------------------------------------------------- captions

CAPTION_GT = {
    "images": [{"id": 17, "file_name": "val/VizWiz_val_00000017.jpg"},
               {"id": 18, "file_name": "val/VizWiz_val_00000018.jpg"},
               {"id": 19, "file_name": "VizWiz_val_00000019.jpg"},
               {"id": 20, "file_name": "val/VizWiz_val_00000020.jpg"}],
    "annotations": [{"image_id": i, "id": n, "caption": c} for n, (i, c) in enumerate([
        (17, "A can of soup on a kitchen counter."), (17, "A red soup can on a table."),
        (18, "A computer screen showing an error message."), (18, "A monitor with text on it."),
        (19, "A bottle of shampoo held in a hand."), (19, "Someone holding a white bottle."),
        (20, "A dog lying on a rug."), (20, "A brown dog on the floor.")])],
}
CAPTIONS_BY_ID = {17: "a can of soup on a table", 18: "a computer monitor with an error message",
                  19: "a hand holding a bottle of shampoo"}


def hide_style_caption_predictions():
    """As HiDe-LLaVA's merged files have them: question_id is the image's file stem, no metadata."""
    preds = [pred(f"VizWiz_val_000000{i}", c) for i, c in CAPTIONS_BY_ID.items()]
    return preds + [pred("VizWiz_val_00000099", "an image nobody has captioned")]


def test_caption_predictions_join_by_file_stem_basename_or_id_never_by_order():
    gt = ground_truth_from_data(CAPTION_GT, source="coco.json")
    assert gt.layout == COCO
    aligned = [pred(i, c) for i, c in CAPTIONS_BY_ID.items()]
    reference = metrics.coco_caption(aligned, gt=CAPTION_GT, options={"java": False})
    for predictions in (hide_style_caption_predictions(), shuffled(hide_style_caption_predictions())):
        result, join = score_against(metrics.coco_caption, predictions, gt, options={"java": False})
        assert result.score == reference.score and result.n == 3
        assert result.details["matched_by_question_id_as_file_name"] == 3.0
        assert join.without_gt == ["VizWiz_val_00000099"] and join.without_prediction == [20]
    by_name = [pred("VizWiz_val_00000017.jpg", CAPTIONS_BY_ID[17]),  # the base name, with extension
               pred("val/VizWiz_val_00000018", CAPTIONS_BY_ID[18]),  # the file_name without extension
               pred(5, CAPTIONS_BY_ID[19], metadata={"image": "/data/VizWiz/VizWiz_val_00000019.jpg"})]
    result, join = score_against(metrics.coco_caption, shuffled(by_name), gt, options={"java": False})
    assert result.score == reference.score and join.without_gt == []


def test_metric_and_ground_truth_of_different_kinds_are_a_usage_error():
    assert gt_kind(metrics.coco_caption) == "captions" and gt_kind(metrics.exact_match) == "answers"
    answers = ground_truth_from_data(TEXT_GT, source="test.json")
    with pytest.raises(UsageError, match="coco_caption scores captions against COCO caption ground truth; "
                                         "test.json is test JSON"):
        score_against(metrics.coco_caption, TEXT_PREDS, answers, metric_id="coco_caption")
    captions = ground_truth_from_data(CAPTION_GT, source="coco.json")
    with pytest.raises(UsageError, match="exact_match compares answers by question_id; coco.json is COCO"):
        score_against(metrics.exact_match, TEXT_PREDS, captions, metric_id="exact_match")


def test_every_registered_metric_reads_a_layout_prism_accepts():
    found: dict[str, str] = {}
    builtin_plugin.register_metrics(lambda id, target, summary="": found.__setitem__(id, target))
    kinds = {metric_id: gt_kind(getattr(metrics, target.rpartition(":")[2])) for metric_id, target in found.items()}
    assert kinds == {**{m: "answers" for m in found if m != "coco_caption"}, "coco_caption": "captions"}


# --------------------------------------------------------------------------- joining

def test_nothing_joining_is_a_data_error_showing_both_sides_ids():
    gt = ground_truth_from_data(TEXT_GT, source="test.json")
    with pytest.raises(DataError) as err:
        score_against(metrics.exact_match, [pred("a", "x"), pred("b", "y")], gt, predictions_source="p.jsonl")
    message = err.value.message
    assert message.startswith("none of the 2 predictions in p.jsonl has ground truth in test.json "
                              "(joined by question_id)")
    assert "'a', 'b'" in message and "1, 2, '3', ..." in message


def test_string_and_integer_ids_join_both_ways():
    gt = ground_truth_from_data([{"question_id": 17, "answer": "a"}, {"question_id": "18", "answer": "b"}],
                                source="t")
    join = join_predictions([pred("17", "a"), pred(18, "b")], gt)
    assert [p["answer"] for p in join.predictions] == ["a", "b"] and join.without_prediction == []


# --------------------------------------------------------------------------- files that are not ground truth

@pytest.mark.parametrize("data, shown", [
    ({"info": {}, "licenses": []}, "it is a JSON object with keys 'info', 'licenses'"),
    ([{"id": 1, "answer": "a"}], "it is a JSON list of 1 item(s) whose first is an object with keys 'id', "
                                 "'answer' (no question_id)"),
    (["a", "b"], "it is a JSON list of 2 item(s) whose first is a str"),
    ([], "it is an empty JSON list"),
    (3, "it is a JSON int"),
    ({"annotations": []}, "it is a JSON object with keys 'annotations'"),
])
def test_an_unknown_layout_names_the_file_its_shape_and_the_accepted_layouts(data, shown):
    with pytest.raises(DataError) as err:
        ground_truth_from_data(data, source="gt.json")
    assert err.value.message == f"ground truth gt.json is in no layout prism reads: {shown}"
    for layout in ("test JSON", "TextVQA", "VQAv2", "COCO caption"):
        assert layout in err.value.hint


@pytest.mark.parametrize("data, message", [
    ([{"question_id": 1, "answer": "a"}, {"question_id": 2}],
     "gt.json: record 1 (question_id 2): needs 'answer' (a string or a non-empty list of strings) or "
     "'answer_bbox', got answer None"),
    ([{"question_id": 1, "answer": "a"}, {"question_id": "1", "answer": "b"}],
     "gt.json: record 1: question_id '1' already appeared in record 0"),
    ([{"question_id": 1, "answer": "a"}, {"question_id": True, "answer": "b"}],
     "gt.json: record 1: 'question_id' must be an integer or a string, got True"),
    ({"data": [{"question_id": 7, "image_id": "x", "question": "what?"}]},
     "gt.json: data[0] (question_id 7): 'answers' must be a list of strings, got None (TextVQA's and "
     "VQAv2's test splits publish no answers: score the val split)"),
    ({"annotations": [{"question_id": 7, "answers": [{"answer_id": 1}]}]},
     "gt.json: annotations[0] (question_id 7): 'answers' must be a list of {\"answer\": string} objects, "
     "got [{'answer_id': 1}]"),
    ({"data": []}, "ground truth gt.json (TextVQA annotations) holds no question: 'data' is empty"),
])
def test_bad_entries_name_file_and_entry(data, message):
    with pytest.raises(DataError) as err:
        ground_truth_from_data(data, source="gt.json")
    assert err.value.message == message


def test_a_json_lines_file_is_told_apart(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 2, "text": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_ground_truth(path)
    assert err.value.message.startswith(f"ground truth {path} is not valid JSON")
    assert "looks like JSON Lines" in err.value.hint


def test_coco_layout_is_validated(tmp_path):
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}), encoding="utf-8")
    with pytest.raises(DataError, match=r"images\[0\] needs 'id' and a string 'file_name'"):
        load_ground_truth(path)


def test_the_score_does_not_depend_on_the_order_of_the_predictions_to_the_last_digit():
    # Per-item ANLS values like 0.9, 0.875, 0.8333...: a plain sum of them changes in the last digit
    # with the order of the lines; the mean is exactly rounded instead.
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(4, 12))) for _ in range(300)]
    gt = ground_truth_from_data([{"question_id": i, "answer": w} for i, w in enumerate(words)], source="t")
    predictions = [pred(i, w[:-1] + "z") for i, w in enumerate(words)]
    scores = {score_against(metrics.anls, shuffled(predictions, seed), gt)[0].score for seed in range(8)}
    assert len(scores) == 1
