"""IoU@0.5: parsing of box text and the CoIN compatibility parser."""

from __future__ import annotations

import pytest

from prism.errors import DataError
from prism.evaluation.metrics import box_iou, iou50, parse_box, parse_box_coin_compat

GT = "[0.1, 0.1, 0.5, 0.5]"


def rec(text, answer=GT, qid=0):
    return {"question_id": qid, "text": text, "answer": answer, "metadata": {}}


@pytest.mark.parametrize(
    "text, box",
    [
        ("[0.1, 0.2, 0.5, 0.78]", (0.1, 0.2, 0.5, 0.78)),
        (" [0.1,0.2,0.5,0.8] ", (0.1, 0.2, 0.5, 0.8)),
        ("0.1, 0.2, 0.5, 0.8", (0.1, 0.2, 0.5, 0.8)),
        ("(0, .2, 1, 1.0).", (0.0, 0.2, 1.0, 1.0)),
        ("[[0.41, 0.06, 0.61, 0.26]]", (0.41, 0.06, 0.61, 0.26)),  # extra brackets, as CoIN reads them
        (" [ [0.41,0.06,0.61,0.26] ] .", (0.41, 0.06, 0.61, 0.26)),
        ("[[0.1, 0.2], [0.5, 0.78]]", None),  # two points: not one box
        ("[0.1, 0.2, 0.5]", None),  # 3 numbers
        ("[0.1, 0.2, 0.5, 0.7, 0.9]", None),  # 5 numbers
        ("The dog on the left.", None),  # a sentence
        ("", None),
    ],
)
def test_parse_box(text, box):
    assert parse_box(text) == box


def test_coin_compat_parser_cuts_the_last_character():
    assert parse_box_coin_compat("[0.1, 0.2, 0.5, 0.78]") == (0.1, 0.2, 0.5, 0.7)
    assert parse_box_coin_compat("[0.1, 0.2, 0.5, 0.8]") == (0.1, 0.2, 0.5, 0.0)
    assert parse_box_coin_compat("The dog.") is None


def test_iou_by_hand():
    assert box_iou((0.1, 0.1, 0.5, 0.5), (0.1, 0.1, 0.5, 0.5)) == pytest.approx(1.0)
    # inter 0.4*0.4 = 0.16; union 0.16 + 0.4*0.68 - 0.16 = 0.272
    assert box_iou((0.1, 0.1, 0.5, 0.78), (0.1, 0.1, 0.5, 0.5)) == pytest.approx(0.16 / 0.272)
    assert box_iou((0.5, 0.5, 0.2, 0.2), (0.1, 0.1, 0.5, 0.5)) == 0.0  # inverted box


def test_iou50_strictly_greater_and_misses_stay_in_denominator():
    preds = [
        rec("[0.1, 0.1, 0.5, 0.5]"),  # IoU 1 -> hit
        rec("[0, 0, 0.5, 1]", answer=[0, 0, 1, 1]),  # IoU exactly 0.5 -> miss
        rec("[0.1, 0.1, 0.5, 0.78]"),  # IoU 0.588 -> hit
        rec("[0.1, 0.2, 0.5]"),  # 3 numbers -> miss
        rec("[0.1, 0.1, 0.5, 0.5, 0.9]"),  # 5 numbers -> miss
        rec("It is the dog on the left."),  # sentence -> miss
        rec(""),  # empty -> miss
    ]
    result = iou50(preds)
    assert result.n == 7
    assert result.per_item == [100.0, 0.0, 100.0, 0.0, 0.0, 0.0, 0.0]
    assert result.score == pytest.approx(200 / 7)
    assert result.details["unparsed"] == 4.0


def test_iou50_coin_compat_reproduces_the_published_bug():
    # Correctly parsed this is a perfect hit; CoIN reads y2 = 0.5 as "0." = 0.0.
    preds = [rec("[0.1, 0.1, 0.5, 0.5]")]
    assert iou50(preds).score == 100.0
    assert iou50(preds, options={"coin_compat": True}).score == 0.0


def test_bad_ground_truth_box_is_a_data_error():
    with pytest.raises(DataError, match="question_id 3"):
        iou50([rec("[0, 0, 1, 1]", answer="left", qid=3)])


def test_a_target_box_in_extra_brackets_or_a_nested_list_is_read():
    preds = [rec("[0.1, 0.1, 0.5, 0.5]", answer="[[0.1, 0.1, 0.5, 0.5]]"),
             rec("[0.1, 0.1, 0.5, 0.5]", answer=[[0.1, 0.1, 0.5, 0.5]], qid=1),
             rec("[[0.1, 0.1, 0.5, 0.5]]", qid=2)]  # used to be a miss: the output was not parsed
    assert iou50(preds).per_item == [100.0, 100.0, 100.0]
