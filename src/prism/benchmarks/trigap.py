"""TriGap (PRISM / SAME, 2026): ten VQA tasks spanning medical, document, chart,
scientific, driving, chemistry, remote-sensing and synthetic-reasoning images.

Expected layout under ``[benchmark] root`` (LAMDA-CL PRISM's ``config/benchmarks/trigap.py``)::

    instructions/PMCVQA/{train_standard_4w_sub.json, test_standard_3k.json}
    instructions/DocVQA/{train_converted_sub.json, val_converted.json}
    instructions/ChartQA/{train_standard_4w_sub.json, test_standard_3k.json}
    instructions/IconQA/{train_sub.json, test_3000.json}
    instructions/InfographicVQA/{infographicsVQA_train_converted_sub.json,
                                 infographicsVQA_val_converted.json}
    instructions/ArxivQA/{train_4w_sub.json, test_3000.json}
    instructions/{Roadside,ChemVQA,FloodNetVQA}/{train_standard_4w_sub.json, test_standard_3k.json}
    instructions/CLEVR/{train_4w_sub.json, test_3000.json}
    datasets/            images; the records' "image" paths start here

The published training files are already the ``_sub`` subsets; the full-size
names without ``_sub`` are accepted after them, and ``sub_dataset`` restricts
training files to the ``_sub`` ones (test files have no subset). Task folders
directly under root, ``PMC-VQA`` and ``CLEVR-Math`` folder names, and plain
``train.json`` / ``test.json`` are accepted too.

Sources: the HF dataset card of ``JuntaoTang/TriGap`` (task list, ``PMCVQA``
naming), LAMDA-CL PRISM's ``config/benchmarks/trigap.py`` (file names, the
``instructions`` + ``datasets`` layout), prism's ``reference/benchmarks.md``
(task order; ANLS for DocVQA and InfographicVQA, exact match elsewhere).
"""

from __future__ import annotations

from prism.benchmarks.published import PublishedBenchmark, TaskLayout


def _files(*names: str) -> tuple[str, ...]:
    """Published names, then their full-size (no ``_sub``) forms, then the generic name."""
    full = [n.replace("_sub.json", ".json") for n in names if n.endswith("_sub.json")]
    generic = "train.json" if "train" in names[0] else "test.json"
    return tuple(dict.fromkeys([*names, *full, generic]))


_STD_TRAIN = _files("train_standard_4w_sub.json")
_STD_TEST = _files("test_standard_3k.json")
_TEST_3000 = _files("test_3000.json")

LAYOUTS: tuple[TaskLayout, ...] = (
    TaskLayout("PMC-VQA", ("PMCVQA", "PMC-VQA"), _STD_TRAIN, _STD_TEST, "exact_match", 16),
    TaskLayout("DocVQA", ("DocVQA",), _files("train_converted_sub.json"), _files("val_converted.json"),
               "anls", 32),
    TaskLayout("ChartQA", ("ChartQA",), _STD_TRAIN, _STD_TEST, "exact_match", 32),
    TaskLayout("IconQA", ("IconQA",), _files("train_sub.json"), _TEST_3000, "exact_match", 16),
    TaskLayout("InfographicVQA", ("InfographicVQA",), _files("infographicsVQA_train_converted_sub.json"),
               _files("infographicsVQA_val_converted.json"), "anls", 32),
    TaskLayout("ArxivQA", ("ArxivQA",), _files("train_4w_sub.json"), _TEST_3000, "exact_match", 16),
    TaskLayout("Roadside", ("Roadside",), _STD_TRAIN, _STD_TEST, "exact_match", 32),
    TaskLayout("ChemVQA", ("ChemVQA",), _STD_TRAIN, _STD_TEST, "exact_match", 32),
    TaskLayout("FloodNetVQA", ("FloodNetVQA",), _STD_TRAIN, _STD_TEST, "exact_match", 16),
    TaskLayout("CLEVR", ("CLEVR", "CLEVR-Math"), _files("train_4w_sub.json"), _TEST_3000, "exact_match", 16),
)


class TriGapBenchmark(PublishedBenchmark):
    """PMC-VQA -> DocVQA -> ChartQA -> IconQA -> InfographicVQA -> ArxivQA -> Roadside -> ChemVQA
    -> FloodNetVQA -> CLEVR."""

    id = "trigap"
    layouts = LAYOUTS
    instruction_dirs = ("instructions", "")
    image_dirs = ("datasets",)
    sub_slots = ("train",)
    download_hint = ("instructions: HF dataset JuntaoTang/TriGap into <root>/instructions; images of the "
                     "ten source datasets (see the dataset card) into <root>/datasets")
