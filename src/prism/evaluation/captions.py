"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) via pycocoevalcap.

Why it is built this way:

* All images of a task are scored in one call, because CIDEr-D takes its IDF
  from the whole reference set: scoring in chunks changes the number.
* Predictions are matched to ground-truth images by id or file name, never by
  position (order-based matching is a known source of wrong published scores).
* The PTB tokenizer and METEOR are Java programs. Without Java the caption
  score is still computed from BLEU, ROUGE-L and CIDEr over a simple tokenizer,
  and the result says so in ``unavailable`` instead of passing as the real one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from prism.errors import DataError, PrismError
from prism.evaluation._records import prediction_text, question_id
from prism.evaluation.caption_match import CaptionMatcher
from prism.evaluation.loading import check_coco_gt, load_coco_gt
from prism.evaluation.result import MetricResult

SUB_METRICS: tuple[str, ...] = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")


# --------------------------------------------------------------------------- matching

class _Matcher(CaptionMatcher):
    """The caption matcher, raising the metric's DataError for a prediction that matches no image."""

    def match(self, record: Mapping[str, Any]) -> str:
        key, why = self.find(record)
        if key is None:
            raise DataError(
                f"caption prediction with question_id {question_id(record)!r} matches no "
                f"ground-truth image: {why}",
                hint="predictions must come from the same test split as the caption ground truth",
            )
        return key


# --------------------------------------------------------------------------- tokenization

_NON_WORD = re.compile(r"[^\w\s]|_")


def simple_tokenize(caption: str) -> str:
    """Java-free stand-in for the PTB tokenizer: lower-case, punctuation removed,
    whitespace collapsed. Scores computed with it are close to, not equal to,
    the reference ones."""
    return " ".join(_NON_WORD.sub(" ", caption.lower()).split())


class _StderrCapturingSubprocess:
    """Stands in for the ``subprocess`` module inside pycocoevalcap's PTB tokenizer.

    The tokenizer starts Java with stdout piped but stderr inherited, so Stanford's
    "PTBTokenizer tokenized N tokens at ..." lines land on the user's terminal in the
    middle of progress bars. Giving the child a stderr pipe keeps them (and any Java
    error) out of the way; ``communicate`` reads both pipes, so nothing can block.
    """

    PIPE = subprocess.PIPE

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802 (the module's name)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(*args, **kwargs)


@contextmanager
def _quiet_ptb_tokenizer() -> Iterator[Any]:
    from pycocoevalcap.tokenizer import ptbtokenizer

    original = ptbtokenizer.subprocess
    ptbtokenizer.subprocess = _StderrCapturingSubprocess  # type: ignore[assignment]
    try:
        yield ptbtokenizer.PTBTokenizer()
    finally:
        ptbtokenizer.subprocess = original


def _tokenize(gts: dict[str, list[str]], res: dict[str, list[str]], use_java: bool,
              unavailable: dict[str, str]) -> tuple[dict[str, list[str]], dict[str, list[str]], bool]:
    if use_java:
        try:
            with _quiet_ptb_tokenizer() as tokenizer:
                gts_tok = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in gts.items()})
                res_tok = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in res.items()})
            if gts_tok.keys() == gts.keys() and res_tok.keys() == res.keys():
                return gts_tok, res_tok, True
            unavailable["PTBTokenizer"] = "the PTB tokenizer returned fewer lines than captions given"
        except Exception as exc:  # Java missing at run time, unwritable package dir, ...
            unavailable["PTBTokenizer"] = f"PTB tokenizer failed ({type(exc).__name__}: {exc})"
    simple = {k: [simple_tokenize(c) for c in v] for k, v in gts.items()}
    return simple, {k: [simple_tokenize(c) for c in v] for k, v in res.items()}, False


# --------------------------------------------------------------------------- scoring

def _stop_meteor(meteor: Any) -> None:
    """End METEOR's Java process now; its own ``__del__`` leaves two pipes open.
    Closing twice and killing an ended process are no-ops, so ``__del__`` stays safe."""
    process = getattr(meteor, "meteor_p", None)
    if process is None:
        return
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    process.kill()
    process.wait()


def _score_all(gts: dict[str, list[str]], res: dict[str, list[str]], use_java: bool,
               unavailable: dict[str, str]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Corpus scores and per-image scores (both on a 0-1 scale) for every sub-metric
    that could be computed; keys of ``gts``/``res`` are in scoring order."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    corpus: dict[str, float] = {}
    per_image: dict[str, list[float]] = {}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        corpus[f"BLEU_{n + 1}"] = float(bleu[n])
        per_image[f"BLEU_{n + 1}"] = [float(x) for x in bleu_each[n]]
    if use_java:
        try:
            from pycocoevalcap.meteor.meteor import Meteor

            meteor = Meteor()
            try:
                score, each = meteor.compute_score(gts, res)
            finally:
                _stop_meteor(meteor)
            corpus["METEOR"] = float(score)
            per_image["METEOR"] = [float(x) for x in each]
        except Exception as exc:
            unavailable["METEOR"] = f"METEOR failed ({type(exc).__name__}: {exc})"
    else:
        unavailable.setdefault("METEOR", "needs Java (METEOR 1.5 is a Java program)")
    for name, scorer in (("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        score, each = scorer.compute_score(gts, res)
        corpus[name] = float(score)
        per_image[name] = [float(x) for x in each]
    return corpus, per_image


def _require_pycocoevalcap() -> None:
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError as exc:
        raise PrismError(
            "caption metrics need pycocoevalcap, which is not installed",
            hint="pip install pycocoevalcap",
        ) from exc


def _java_wanted(options: Mapping[str, Any], unavailable: dict[str, str]) -> bool:
    wanted = options.get("java")
    if wanted is False:
        reason = "Java disabled by options['java'] = False"
    elif shutil.which("java") is None:
        reason = "Java not found on PATH (install a JRE, e.g. openjdk-17-jre-headless)"
    else:
        return True
    unavailable["PTBTokenizer"] = reason + "; a simple lower-case/punctuation tokenizer was used"
    unavailable["METEOR"] = reason
    return False


def coco_caption(predictions: Sequence[dict[str, Any]], *, gt: dict | str | os.PathLike | None = None,
                 options: dict | None = None) -> MetricResult:
    """Mean of BLEU-1..4, METEOR, ROUGE-L and CIDEr (each x100) over all images.

    ``gt`` is the COCO caption ground truth (a dict as from ``load_coco_gt`` or
    its path). Each prediction is matched to a gt image by ``question_id`` (an
    image id, or the image's file name with or without extension and folders)
    or by the file name of ``metadata.image`` (see ``_Matcher``); a prediction that
    matches nothing, or two predictions for one image, is a ``DataError``. Gt
    images without a prediction are counted in ``details["missing_predictions"]``
    and not scored (as COCOEvalCap scores the images that have results).
    ``options={"java": False}`` forces the Java-free path. ``options={"cider_max": c}``
    clips CIDEr-D at ``c`` before averaging (off by default: the published protocol
    does not clip; the synthetic benchmark does, to keep cells percentages).
    """
    _require_pycocoevalcap()
    predictions = list(predictions)
    if gt is None:
        raise DataError("coco_caption needs the COCO caption ground truth (gt=...)")
    if not isinstance(gt, dict):
        gt = load_coco_gt(gt)
    else:
        check_coco_gt(gt)
    unavailable: dict[str, str] = {}
    use_java = _java_wanted(options or {}, unavailable)

    refs: dict[str, list[str]] = {}
    for ann in gt["annotations"]:
        refs.setdefault(str(ann["image_id"]), []).append(ann["caption"])
    matcher = _Matcher(gt["images"])
    key_of_item: list[str] = []
    owner: dict[str, Any] = {}
    for record in predictions:
        key = matcher.match(record)
        if key in owner:
            raise DataError(
                f"question_ids {owner[key]!r} and {question_id(record)!r} both predict a "
                f"caption for ground-truth image {key}"
            )
        if key not in refs:
            raise DataError(f"ground-truth image {key} (question_id {question_id(record)!r}) has no captions")
        owner[key] = question_id(record)
        key_of_item.append(key)

    details: dict[str, float] = {
        "n_gt_images": float(len(gt["images"])),
        "missing_predictions": float(len(gt["images"]) - len(key_of_item)),
        "matched_by_question_id": float(matcher.by_id),
        "matched_by_file_name": float(matcher.by_file_name),
        "matched_by_question_id_as_file_name": float(matcher.by_question_id_file_name),
        "id_file_name_conflicts": float(matcher.conflicts),
    }
    if not key_of_item:
        return MetricResult(score=0.0, n=0, per_item=[], details=details, unavailable=unavailable)

    # A fixed scoring order makes the score independent of the prediction order,
    # down to floating-point summation.
    order = sorted(key_of_item, key=lambda k: (len(k), k))
    text_of = {key: prediction_text(rec) for key, rec in zip(key_of_item, predictions)}
    gts_raw = {k: refs[k] for k in order}
    res_raw = {k: [text_of[k].replace("\n", " ")] for k in order}
    gts_tok, res_tok, used_ptb = _tokenize(gts_raw, res_raw, use_java, unavailable)
    corpus, per_image = _score_all(gts_tok, res_tok, use_java, unavailable)

    cider_max = (options or {}).get("cider_max")
    if cider_max is not None and "CIDEr" in corpus:
        details["CIDEr_unclipped"] = 100.0 * corpus["CIDEr"]
        details["CIDEr_clipped_at"] = 100.0 * float(cider_max)
        corpus["CIDEr"] = min(corpus["CIDEr"], float(cider_max))
        per_image["CIDEr"] = [min(v, float(cider_max)) for v in per_image["CIDEr"]]
    for name in SUB_METRICS:
        if name in corpus:
            details[name] = 100.0 * corpus[name]
    details["metrics_averaged"] = float(len(corpus))
    details["ptb_tokenizer"] = 1.0 if used_ptb else 0.0
    score = sum(100.0 * v for v in corpus.values()) / len(corpus)

    position = {k: i for i, k in enumerate(order)}
    per_item = [
        100.0 * sum(per_image[m][position[k]] for m in per_image) / len(per_image)
        for k in key_of_item
    ]
    return MetricResult(score=score, n=len(key_of_item), per_item=per_item,
                        details=details, unavailable=unavailable)


#: The ground truth this metric reads (see ``prism.evaluation.ground_truth.gt_kind``): COCO
#: caption files, joined to predictions by image, not question_id -> answer mappings.
coco_caption.gt_kind = "captions"  # type: ignore[attr-defined]
