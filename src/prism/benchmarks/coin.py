"""CoIN (Chen et al., NeurIPS 2024 D&B): eight instruction-tuning tasks over
classic VQA, classification and referring-expression data.

Expected layout under ``[benchmark] root`` (the CoIN repository's README and scripts)::

    Instructions_Original/<Task>/train.json
    Instructions_Original/<Task>/test.json      (val.json for TextVQA, VizWiz, VQAv2)
    cl_dataset/                                  images; the records' "image" paths start here

``<Task>`` is ScienceQA, TextVQA, ImageNet, GQA, VizWiz, Grounding, VQAv2, OCRVQA.
TextVQA, VizWiz and VQAv2 are scored on their validation split because the
answers of their test splits are not public; CoIN's own scripts and PRISM use
``val.json`` there (PRISM's copy of TextVQA calls it ``valid.json``; HiDe-LLaVA's
scripts call every split ``test.json``), so all three names are accepted.
Also accepted: ``Instruction_Original/`` (the README's spelling),
``playground/Instructions_Original/`` (root = a CoIN checkout), task folders
directly under root (HiDe-LLaVA, PRISM) and ``datasets/`` for images. The other
instruction sets of ``Zacks-Chen/CoIN`` (``Instructions_Diverse``,
``Instructions_10Type``, formerly ``Instructions_Type2``) are selected per task
with ``[benchmark.overrides."<task>"]`` train_file / test_file.
CoIN has no published subset, so ``sub_dataset`` is an error here.

Sources for these names: github.com/zackschen/CoIN (README.md,
``scripts/LLaVA/{Train,Eval}``); the HF dataset tree of ``Zacks-Chen/CoIN``;
HiDe-LLaVA's ``scripts/HiDe/{Train,Eval}_CoIN``; LAMDA-CL PRISM's
``config/benchmarks/coin.py``; prism's ``reference/benchmarks.md``.
"""

from __future__ import annotations

from prism.benchmarks.published import PublishedBenchmark, TaskLayout

_TRAIN = ("train.json",)
_TEST = ("test.json", "val.json", "valid.json")
_VAL = ("val.json", "valid.json", "test.json")  # test answers are not public for these tasks

LAYOUTS: tuple[TaskLayout, ...] = (
    TaskLayout("ScienceQA", ("ScienceQA",), _TRAIN, _TEST, "option_accuracy", 16),
    TaskLayout("TextVQA", ("TextVQA",), _TRAIN, _VAL, "vqa_accuracy", 32),
    TaskLayout("ImageNet", ("ImageNet",), _TRAIN, _TEST, "containment", 32),
    TaskLayout("GQA", ("GQA",), _TRAIN, _TEST, "exact_match", 16),
    TaskLayout("VizWiz", ("VizWiz",), _TRAIN, _VAL, "exact_match", 32),
    TaskLayout("Grounding", ("Grounding",), _TRAIN, _TEST, "iou50", 32),
    TaskLayout("VQAv2", ("VQAv2",), _TRAIN, _VAL, "exact_match", 16),
    TaskLayout("OCR-VQA", ("OCRVQA", "OCR-VQA"), _TRAIN, _TEST, "exact_match", 32),
)


class CoINBenchmark(PublishedBenchmark):
    """ScienceQA -> TextVQA -> ImageNet -> GQA -> VizWiz -> Grounding -> VQAv2 -> OCR-VQA."""

    id = "coin"
    layouts = LAYOUTS
    instruction_dirs = ("Instructions_Original", "Instruction_Original", "playground/Instructions_Original", "")
    image_dirs = ("cl_dataset", "datasets")
    sub_slots = ()
    download_hint = ("instructions: HF dataset Zacks-Chen/CoIN (Instructions_Original) into <root>; "
                     "images (COCO 2014, GQA, OCR-VQA, TextVQA, ScienceQA, VizWiz, ImageNet) into "
                     "<root>/cl_dataset, as in the CoIN README")
