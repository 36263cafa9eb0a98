"""UCIT (HiDe-LLaVA, ACL 2025): six tasks chosen so that the pre-trained model has
not already seen them, which is why forgetting is visible on it.

Expected layout under ``[benchmark] root`` (HiDe-LLaVA's README and PRISM's configs)::

    instructions/ImageNet-R/{train.json, test_3000.json}
    instructions/ArxivQA/{train_4w.json, test_3000.json}
    instructions/VizWiz/{train.json, test_3000.json, val_coco_type_3000.json}
    instructions/IconQA/{train.json, test_3000.json}
    instructions/CLEVR/{train_4w.json, test_3000.json}
    instructions/Flickr30k/{train_brief_4w.json, test_3000.json, test_coco_type.json}
    datasets/            images; the records' "image" paths start here

Also accepted, because the reproductions differ: task folders directly under
root (MCITlib), the folder names of HiDe-LLaVA's scripts (``VizWiz-caption``,
``CLEVR-Math``, ``Flickr30k-cap``) and PRISM's ``ArixvQA`` spelling, any of
``train.json`` / ``train_4w.json`` / ``train_brief_4w.json`` and ``test.json``
(MCITlib renames the files), and for Flickr30k's ground truth
``val_coco_type_3000.json`` (HiDe-LLaVA) or ``val_coco_type.json`` (PRISM).
``sub_dataset`` selects PRISM's ``*_sub.json`` files for train, test and ground truth.

Sources for these names: the HiDe-LLaVA README and ``scripts/HiDe/{Train,Eval}_UCIT``
(github.com/Ghy0501/HiDe-LLaVA); MCITlib's README and
``LoRA-FT/configs/data_configs/UCIT`` (github.com/Ghy0501/MCITlib); LAMDA-CL PRISM's
``config/benchmarks/ucit.py`` and ``utils/sub_dataset.py``; the HF dataset cards of
``HaiyangGuo/UCIT`` and its mirrors; prism's ``reference/benchmarks.md``.
"""

from __future__ import annotations

from prism.benchmarks.published import PublishedBenchmark, TaskLayout

_TRAIN = ("train.json", "train_4w.json", "train_brief_4w.json")
_TEST = ("test_3000.json", "test.json")


def _train(first: str) -> tuple[str, ...]:
    """The published training file first, then the other accepted names."""
    return (first, *(name for name in _TRAIN if name != first))


LAYOUTS: tuple[TaskLayout, ...] = (
    TaskLayout("ImageNet-R", ("ImageNet-R",), _train("train.json"), _TEST, "exact_match", 16),
    TaskLayout("ArxivQA", ("ArxivQA", "ArixvQA"), _train("train_4w.json"), _TEST, "exact_match", 16),
    TaskLayout("VizWiz-Caption", ("VizWiz", "VizWiz-caption", "VizWiz-Caption"), _train("train.json"), _TEST,
               "coco_caption", 64, gt=("val_coco_type_3000.json", "test_coco_type.json")),
    TaskLayout("IconQA", ("IconQA",), _train("train.json"), _TEST, "exact_match", 16),
    TaskLayout("CLEVR-Math", ("CLEVR", "CLEVR-Math"), _train("train_4w.json"), _TEST, "exact_match", 16),
    TaskLayout("Flickr30k", ("Flickr30k", "Flickr30k-cap"), _train("train_brief_4w.json"), _TEST,
               "coco_caption", 64, gt=("test_coco_type.json", "val_coco_type_3000.json", "val_coco_type.json")),
)


class UCITBenchmark(PublishedBenchmark):
    """ImageNet-R -> ArxivQA -> VizWiz-Caption -> IconQA -> CLEVR-Math -> Flickr30k."""

    id = "ucit"
    layouts = LAYOUTS
    instruction_dirs = ("instructions", "")
    image_dirs = ("datasets",)
    sub_slots = ("train", "test", "gt")
    download_hint = ("instructions: HF dataset HaiyangGuo/UCIT (also MLLM-CL/UCIT) into <root>/instructions; "
                     "images (ImageNet-R, Flickr30k from HaiyangGuo/UCIT, ArxivQA from MMInstruction/ArxivQA, "
                     "CLEVR-Math from dali-does/clevr-math, IconQA, VizWiz) into <root>/datasets")
