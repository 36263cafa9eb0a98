"""Hand-computed cases for the item-level text metrics."""

from __future__ import annotations

import pytest

from prism.errors import DataError
from prism.evaluation.metrics import (
    anls,
    anls_score,
    containment,
    exact_match,
    exact_match_normalized,
    normalize_vqa_answer,
    option_accuracy,
    parse_option_letter,
    vqa_accuracy,
    vqa_soft_score,
)


def rec(text, answer, qid=0, **extra):
    return {"question_id": qid, "prompt": "q", "text": text, "answer": answer,
            "model_id": "m", "metadata": {}, **extra}


# ----------------------------------------------------------------------------- exact match

def test_exact_match_uses_upper_not_lower():
    # "Fußball".upper() == "FUSSBALL", but "fußball" != "fussball".
    result = exact_match([rec("Fußball", "FUSSBALL")])
    assert result.score == 100.0
    assert result.details["exact_match_normalized"] == 0.0


def test_exact_match_strips_both_sides_and_reports_normalized():
    preds = [rec(" cat\n", "CAT "), rec("two", "2"), rec("a dog", "dog"), rec("cow", "horse")]
    result = exact_match(preds)
    assert result.n == 4
    assert result.per_item == [100.0, 0.0, 0.0, 0.0]
    assert result.score == 25.0
    assert result.details == {"exact_match": 25.0, "exact_match_normalized": 75.0}


def test_exact_match_normalized_is_the_score_of_its_own_metric():
    preds = [rec(" cat\n", "CAT "), rec("two", "2"), rec("a dog", "dog"), rec("cow", "horse")]
    result = exact_match_normalized(preds)
    assert result.score == 75.0
    assert result.per_item == [100.0, 100.0, 100.0, 0.0]
    assert result.details["exact_match"] == 25.0


def test_gt_mapping_is_matched_by_question_id_not_order():
    preds = [rec("cat", None, qid=1), rec("dog", None, qid=2)]
    result = exact_match(preds, gt={"2": "dog", 1: "cat"})
    assert result.score == 100.0


def test_missing_answer_names_the_question():
    with pytest.raises(DataError, match="q-7"):
        exact_match([{"question_id": "q-7", "text": "x"}])


def test_non_string_text_names_the_question():
    with pytest.raises(DataError, match="'q-8'"):
        exact_match([{"question_id": "q-8", "text": None, "answer": "x"}])


def test_empty_task_scores_zero_with_n_zero():
    result = exact_match([])
    assert (result.score, result.n) == (0.0, 0)


# ----------------------------------------------------------------------------- containment

def test_containment_both_directions_lower_cased():
    preds = [
        rec("It is a Goldfish.", "goldfish"),  # answer in prediction
        rec("tiger", "Tiger shark"),  # prediction in answer
        rec("shark", "goldfish"),
        rec("   ", "goldfish"),  # empty output is a miss here
    ]
    result = containment(preds)
    assert result.per_item == [100.0, 100.0, 0.0, 0.0]
    assert result.details["empty_predictions"] == 1.0


def test_containment_coin_compat_is_case_sensitive_and_counts_empty():
    preds = [rec("It is a Goldfish.", "goldfish"), rec("", "goldfish")]
    assert containment(preds, options={"coin_compat": True}).per_item == [0.0, 100.0]


# ----------------------------------------------------------------------------- options

@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"), ("b", "B"), ("B.", "B"), ("(B)", "B"), ("B) a cat", "B"), ("B. a cat", "B"),
        ("The answer is B", "B"), ("The answer is B.", "B"), ("Answer: (C)", "C"),
        ("I think it is C", "C"), ("A", "A"), ("A dog", None), ("the answer is a dog", None),
        ("", None),
    ],
)
def test_parse_option_letter(text, letter):
    assert parse_option_letter(text) == letter


def test_option_accuracy():
    preds = [rec("B", "B"), rec("(C)", "C"), rec("The answer is D", "A"), rec("no idea", "A")]
    result = option_accuracy(preds)
    assert result.per_item == [100.0, 100.0, 0.0, 0.0]
    assert result.details["unparsed"] == 1.0


def test_option_accuracy_coin_compat_takes_first_one_letter_word():
    # CoIN's parser picks the first one-character word: "a" -> "A".
    preds = [rec("I think a B", "B"), rec("C. because", "C")]
    assert option_accuracy(preds, options={"coin_compat": True}).per_item == [0.0, 100.0]


# ----------------------------------------------------------------------------- VQA

@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("two", "2"), ("Two", "2"), ("none", "0"),
        ("a dog", "dog"), ("The dog", "dog"), ("an apple", "apple"),
        ("dont", "don't"), ("isnt", "isn't"), ("don't", "don't"),
        ("yes!", "yes"), ("yes.", "yes"), ("hot-dog", "hot dog"), ("hot - dog", "hot dog"),
        ("3.5", "3.5"), ("1,000", "1000"), ("what?", "what"), ("dog's bone", "dog 's bone"),
        ("  Red\tCar\n", "red car"), ("(yes)", "yes"), ("e.g.", "eg"),
    ],
)
def test_vqa_normalization(raw, normalized):
    assert normalize_vqa_answer(raw) == normalized


def test_vqa_normalization_removes_at_most_32_periods():
    # The reference passes re.UNICODE (== 32) where the count argument goes.
    assert normalize_vqa_answer("a" + "." * 40) == "a" + "." * 8


TEN = ["Two", "2", "two.", "three", "3", "3", "3", "3", "four", "none"]


@pytest.mark.parametrize(
    "prediction, expected",
    [
        # 3 matching answers: 3 subsets leave one of them out (2/3), 7 keep all three (1).
        ("2", (3 * (2 / 3) + 7 * 1) / 10),  # 0.9
        ("the three", 1.0),  # 5 matches: every subset has >= 3
        ("4", (1 * 0 + 9 * (1 / 3)) / 10),  # 0.3
        ("zero", 0.3),  # "none" and "zero" both normalise to "0"
        ("five", 0.0),
    ],
)
def test_vqa_soft_score_by_hand(prediction, expected):
    assert vqa_soft_score(prediction, TEN) == pytest.approx(expected, abs=1e-12)


def test_vqa_accuracy_two_matches_is_0_6():
    answers = ["cat", "cat"] + ["dog"] * 8
    # 2 subsets leave a "cat" out (1/3), 8 keep both (2/3): (2/3 + 16/3) / 10 = 0.6
    result = vqa_accuracy([rec("Cat", answers), rec("dog", answers)])
    assert result.per_item[0] == pytest.approx(60.0)
    assert result.per_item[1] == pytest.approx(100.0)
    assert result.score == pytest.approx(80.0)


def test_vqa_accuracy_needs_ten_answers():
    with pytest.raises(DataError, match="10 human answers"):
        vqa_accuracy([rec("cat", ["cat"] * 3, qid=5)])


# ----------------------------------------------------------------------------- ANLS

def test_anls_threshold_boundary():
    assert anls_score("abxy", ["abcd"]) == 0.5  # 1 - 2/4, exactly 0.5 is kept
    assert anls_score("axyz", ["abcd"]) == 0.0  # 0.25 < 0.5
    assert anls_score("abcf", ["hello", "abcd"]) == 0.75  # best over answers
    assert anls_score("ABCD ", ["abcd"]) == 1.0  # lower-cased and stripped


def test_anls_divides_by_the_raw_length():
    # normalised "abc" vs "abd" differ by 1; the raw answer is 6 long -> 1 - 1/6.
    assert anls_score("abd", ["abc   "]) == pytest.approx(1 - 1 / 6)


def test_anls_metric():
    result = anls([rec("abxy", ["abcd"]), rec("axyz", "abcd"), rec("abcd", ["x", "abcd"])])
    assert result.per_item == [50.0, 0.0, 100.0]
    assert result.score == pytest.approx(50.0)
