"""The embedded benchmark: five generated shape tasks in the real file formats.

Each image is a 48 px scene of coloured shapes on a 2 x 2 grid. The tasks ask for
different *answer formats* (a colour word, an option letter, a digit, left/right,
a two-shape caption), like UCIT's spread of skills, so a model fine-tuned on one
task drifts on the others. Every target is a function of the scene: one image,
one correct answer.

The files are written exactly as real benchmarks ship them (PNG images, LLaVA
conversation JSON, test JSON, COCO caption ground truth) so the real loading and
scoring code runs on them. Generation is deterministic in the seed.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageDraw

from prism.atomic import replace_folder, temporary_sibling
from prism.benchmarks.base import Benchmark, TaskSpec
from prism.errors import ConfigError, DataError

#: Bump when generated content changes: a stored folder with another version is regenerated.
GENERATOR_VERSION = 1
MARKER_FILE = "prism_synthetic.json"
IMAGE_SIZE = 48
#: Shapes sit on a 2 x 2 grid of 24 px cells (3 x 3 patches each). On a 3 x 3 grid the
#: shapes are so small that the tiny tower never learns to tell them apart (measured).
GRID = 2
CELL = IMAGE_SIZE // GRID

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (225, 195, 25),
    "purple": (135, 55, 175),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")  # also the fixed option order A-D
OPTION_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five")
COLUMN_WORDS: tuple[str, ...] = ("left", "right")
MAX_COUNT = GRID * GRID


# -- scenes ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One shape: what it is and where (grid cell plus a pixel offset inside it)."""

    shape: str
    colour: str
    col: int  # 0 left, 1 right
    row: int
    size: int
    dx: int
    dy: int


@dataclass(frozen=True)
class Scene:
    items: tuple[Item, ...]
    background: int  # grey level

    def left_to_right(self) -> list[Item]:
        return sorted(self.items, key=lambda it: (it.col, it.row))


def random_item(rng: random.Random, col: int, row: int) -> Item:
    # Large and nearly centred in its cell: the tiny tower learns shapes from big,
    # grid-aligned blobs in a few hundred steps, and not at all from small ones.
    size = rng.randint(CELL * 3 // 4, CELL - 1)
    slack = CELL - size

    def offset() -> int:
        return min(slack, max(0, slack // 2 + rng.randint(-1, 1)))

    return Item(shape=rng.choice(SHAPES), colour=rng.choice(sorted(COLOURS)), col=col, row=row,
                size=size, dx=offset(), dy=offset())


def random_scene(rng: random.Random, n_items: int, columns: tuple[int, ...] | None = None) -> Scene:
    """``n_items`` shapes in distinct cells; ``columns`` fixes each item's column (distinct rows not implied)."""
    if columns is not None:
        cells = [(c, rng.randrange(GRID)) for c in columns]
    else:
        cells = rng.sample([(c, r) for c in range(GRID) for r in range(GRID)], n_items)
    items = tuple(random_item(rng, c, r) for c, r in cells)
    return Scene(items=items, background=rng.randint(225, 255))


def render_scene(scene: Scene) -> Image.Image:
    """Draw the scene as an RGB image of IMAGE_SIZE pixels."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (scene.background,) * 3)
    draw = ImageDraw.Draw(image)
    for it in scene.items:
        x0, y0 = it.col * CELL + it.dx, it.row * CELL + it.dy
        x1, y1 = x0 + it.size - 1, y0 + it.size - 1
        fill = COLOURS[it.colour]
        if it.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif it.shape == "square":
            draw.rectangle((x0 + 1, y0 + 1, x1 - 1, y1 - 1), fill=fill)  # a circle's bounding box is larger
        elif it.shape == "triangle":
            draw.polygon(((x0 + x1) / 2, y0, x1, y1, x0, y1), fill=fill)
        elif it.shape == "cross":
            bar = max(3, it.size // 3)
            mid_x, mid_y = (x0 + x1) // 2, (y0 + y1) // 2
            draw.rectangle((mid_x - bar // 2, y0, mid_x - bar // 2 + bar - 1, y1), fill=fill)
            draw.rectangle((x0, mid_y - bar // 2, x1, mid_y - bar // 2 + bar - 1), fill=fill)
        else:  # pragma: no cover - SHAPES is closed
            raise ValueError(it.shape)
    return image


# -- tasks -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticTask:
    """A task: how to draw a scene for it, its question, and the scene's one answer."""

    spec: TaskSpec
    question: str
    make_scene: Callable[[random.Random], Scene]
    answer: Callable[[Scene], str]


def _single(rng: random.Random) -> Scene:
    return random_scene(rng, 1)


def _side(rng: random.Random) -> Scene:
    return random_scene(rng, 1, columns=(rng.choice((0, GRID - 1)),))


def _count(rng: random.Random) -> Scene:
    return random_scene(rng, rng.randint(1, MAX_COUNT))


def _pair(rng: random.Random) -> Scene:
    return random_scene(rng, 2, columns=(0, GRID - 1))


def caption_of(scene: Scene) -> str:
    """The caption task's target: the two shapes, left one first."""
    left, right = scene.left_to_right()
    return f"{left.colour} {left.shape} next to {right.colour} {right.shape}"


MC_QUESTION = (
    "Which shape is in the image?\n"
    + "\n".join(f"{letter}. {shape}" for letter, shape in zip(OPTION_LETTERS, SHAPES))
    + "\nAnswer with the option's letter from the given choices directly."
)

TASKS: tuple[SyntheticTask, ...] = (
    SyntheticTask(
        TaskSpec("colour", "colour/train.json", "colour/test.json", "exact_match",
                 max_new_tokens=8, image_root="colour"),
        "What colour is the shape?\nAnswer with one word.",
        _single, lambda s: s.items[0].colour),
    SyntheticTask(
        TaskSpec("shape_mc", "shape_mc/train.json", "shape_mc/test.json", "exact_match",
                 max_new_tokens=8, image_root="shape_mc"),
        MC_QUESTION,
        _single, lambda s: OPTION_LETTERS[SHAPES.index(s.items[0].shape)]),
    SyntheticTask(
        TaskSpec("count", "count/train.json", "count/test.json", "exact_match",
                 max_new_tokens=8, image_root="count"),
        "How many shapes are in the image?\nAnswer with a single number.",
        _count, lambda s: str(len(s.items))),
    SyntheticTask(
        TaskSpec("position", "position/train.json", "position/test.json", "exact_match",
                 max_new_tokens=8, image_root="position"),
        "Is the shape on the left or on the right of the image?\nAnswer with one word.",
        _side, lambda s: COLUMN_WORDS[s.items[0].col]),
    SyntheticTask(
        TaskSpec("caption", "caption/train.json", "caption/test.json", "coco_caption",
                 max_new_tokens=16, image_root="caption", gt_file="caption/test_coco_gt.json",
                 # Exact synthetic captions drive CIDEr-D towards 10 (x100 = 1000); clipping it
                 # at 1.0 keeps every matrix cell a percentage. Real benchmarks do not clip.
                 metric_options=(("cider_max", 1.0),)),
        "Write a short caption for the image.",
        _pair, caption_of),
)


def vocabulary_texts() -> list[str]:
    """Every text the benchmark can produce (questions and all possible answers).

    The tiny base model's word-level vocabulary is built from this, so a
    benchmark word is never an unknown token.
    """
    texts = [t.question for t in TASKS]
    texts += list(COLOURS) + list(SHAPES) + list(OPTION_LETTERS) + list(NUMBER_WORDS) + list(COLUMN_WORDS)
    texts += [str(n) for n in range(10)]
    texts.append(caption_of(Scene(items=(Item("circle", "red", 0, 0, 10, 0, 0),
                                         Item("cross", "blue", 1, 0, 10, 0, 0)), background=255)))
    return texts


def words_of(text: str) -> list[str]:
    """Split like the tiny tokenizer's pre-tokenizer (``\\w+|[^\\w\\s]+``)."""
    return re.findall(r"\w+|[^\w\s]+", text)


# -- files ---------------------------------------------------------------------------------
DEFAULT_TRAIN_SIZE = 1200
DEFAULT_TEST_SIZE = 80


def _rng(seed: int, task: str, split: str) -> random.Random:
    # str seeds are hashed with sha512 by `random`: stable across runs and PYTHONHASHSEED.
    return random.Random(f"prism-synthetic:{GENERATOR_VERSION}:{seed}:{task}:{split}")


def _marker(seed: int, train_size: int, test_size: int) -> dict[str, Any]:
    return {
        "generator": "prism.benchmarks.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "train_size": train_size,
        "test_size": test_size,
        "tasks": [t.spec.name for t in TASKS],
    }


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_task(out: Path, task: SyntheticTask, seed: int, train_size: int, test_size: int) -> None:
    """Write one task's images and annotation files under ``out/<task>/``."""
    name = task.spec.name
    folder = out / name
    (folder / "images").mkdir(parents=True, exist_ok=True)

    def draw(split: str, count: int) -> list[tuple[str, Scene]]:
        rng = _rng(seed, name, split)
        rows = []
        for i in range(count):
            scene = task.make_scene(rng)
            rel = f"images/{split}_{i:05d}.png"
            render_scene(scene).save(folder / rel, format="PNG", optimize=False)
            rows.append((rel, scene))
        return rows

    train = [
        {"id": f"{name}_{i:05d}", "image": rel,
         "conversations": [{"from": "human", "value": "<image>\n" + task.question},
                           {"from": "gpt", "value": task.answer(scene)}]}
        for i, (rel, scene) in enumerate(draw("train", train_size))
    ]
    test = [
        {"question_id": i, "image": rel, "text": task.question, "answer": task.answer(scene)}
        for i, (rel, scene) in enumerate(draw("test", test_size))
    ]
    _write_json(folder / "train.json", train)
    _write_json(folder / "test.json", test)
    if task.spec.gt_file:
        gt = {
            "info": {"description": f"prism synthetic {name} ground truth"},
            "images": [{"id": r["question_id"], "file_name": r["image"]} for r in test],
            "annotations": [{"id": r["question_id"], "image_id": r["question_id"], "caption": r["answer"]}
                            for r in test],
        }
        _write_json(out / task.spec.gt_file, gt)


def generate(out: Path, seed: int = 0, train_size: int = DEFAULT_TRAIN_SIZE,
             test_size: int = DEFAULT_TEST_SIZE) -> None:
    """Write the whole benchmark into ``out`` (which should be empty); the marker comes last."""
    out.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        write_task(out, task, seed, train_size, test_size)
    _write_json(out / MARKER_FILE, _marker(seed, train_size, test_size))


def read_marker(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class SyntheticBenchmark(Benchmark):
    """Generated shapes benchmark; ``prepare`` (re)generates it when the marker does not match."""

    id = "synthetic"
    tasks = [t.spec for t in TASKS]
    creates_data = True

    def __init__(self, config: Any, project_dir: Path, *, train_size: int = DEFAULT_TRAIN_SIZE,
                 test_size: int = DEFAULT_TEST_SIZE):
        super().__init__(config, project_dir)
        self.train_size = train_size
        self.test_size = test_size

    @property
    def seed(self) -> int:
        return int(getattr(self.config, "seed", 0) or 0)

    def task_specs(self) -> list[TaskSpec]:
        """The generated tasks; ``[benchmark] overrides`` would replace files this benchmark writes
        itself, so they are refused rather than ignored."""
        overrides = getattr(self.config, "overrides", None)
        if overrides:
            raise ConfigError(
                f"[benchmark] overrides: the synthetic benchmark generates its own files, so per-task "
                f"overrides do not apply (given for {', '.join(map(repr, overrides))})",
                hint='remove [benchmark] overrides (and any [benchmark.overrides."<task>"] table); '
                     "file-based benchmarks (ucit, coin, trigap) take them")
        return list(self.tasks)

    def is_prepared(self) -> bool:
        return read_marker(self.root) == _marker(self.seed, self.train_size, self.test_size)

    def prepare(self) -> Path:
        """Generate into a temporary sibling folder and rename it into place.

        A folder that lacks the marker but holds files is not ours: it is never deleted.
        """
        root = self.root
        if self.is_prepared():
            return root
        if root.is_symlink() and not root.exists():
            raise DataError(f"{root} is a symbolic link to {os.readlink(root)}, which does not exist",
                            hint="restore the link's target, or remove the link to generate the benchmark there")
        if root.exists() and read_marker(root) is None and any(root.iterdir()):
            raise DataError(
                f"{root} exists and is not a prism synthetic benchmark folder (no {MARKER_FILE})",
                hint="point [benchmark] root at an empty or new folder, or remove this one",
            )
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(root)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            generate(tmp, self.seed, self.train_size, self.test_size)
            if self.is_prepared():  # another process finished first
                return root
            replace_folder(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return root
