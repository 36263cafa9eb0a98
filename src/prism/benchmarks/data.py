"""From benchmark files on disk to model batches.

Loading (``prism.benchmarks.records``) validates every record and names the
file and record index of the first bad one; images are ``prism.benchmarks.images``. Encoding renders a conversation with the backbone's template,
expands each ``<image>`` into the model's image tokens (what ``LlavaProcessor``
does), tokenises the text *once* with offsets, and supervises exactly the
tokens that lie inside the template's supervised segments (the answers).
Tokenising once keeps sentencepiece-style tokenizers honest: tokenising
segments separately would change how words at segment borders are split.

``TaskDataset`` holds a task's records as their JSON rows and encodes a record
(image decoded, text tokenised) only when it is read, so DataLoader workers do
the decoding and memory does not grow with the task (a 336-px image is 1.35 MB
of fp32 pixels; a UCIT task has ~40k records).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prism.benchmarks.base import TaskSpec
from prism.benchmarks.batch import IGNORE_INDEX, Batch, EncodedSample, collate
from prism.benchmarks.image_manifest import ImageVerifier, image_key, verifier_for
from prism.benchmarks.images import IMAGE_HINT, load_image, pixel_values, resolve_image
from prism.benchmarks.records import IMAGE_PLACEHOLDER
from prism.benchmarks.records import load_test_records, load_train_records  # noqa: F401 - read here by runs
from prism.errors import ConfigError, DataError, PrismError

if TYPE_CHECKING:

    from prism.backbones.base import LoadedBackbone
    from prism.backbones.template import ConversationTemplate

#: Key the engine (and replay methods) set on a record: the name of the task it belongs to.
TASK_KEY = "_task"


# -- encoding ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoder:
    """What encoding needs of a backbone, without the model: small and picklable, so
    DataLoader workers (forked or spawned) get the tokenizer and image processor only."""

    tokenizer: Any
    image_processor: Any
    template: "ConversationTemplate"
    num_image_tokens: int
    image_token: str = "<image>"
    model_path: str = ""

    @property
    def image_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(self.image_token))

    @classmethod
    def of(cls, backbone: "LoadedBackbone | Encoder") -> "Encoder":
        if isinstance(backbone, Encoder):
            return backbone
        return cls(backbone.tokenizer, backbone.image_processor, backbone.template, backbone.num_image_tokens,
                   backbone.image_token, backbone.model_path)


def encode_text(turns: list[tuple[str, str]], backbone: "LoadedBackbone", *, num_images: int,
                add_generation_prompt: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Render, expand ``<image>`` and tokenise once; return (input_ids, labels).

    A token is supervised when its character span (leading whitespace ignored,
    so sentencepiece's ``▁word`` counts) lies inside a supervised segment.
    """
    tokenizer = backbone.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"the tokenizer of {backbone.model_path} is not a fast tokenizer; "
                          "prism needs character offsets to build labels")
    expansion = backbone.image_token * backbone.num_image_tokens
    text = ""
    supervised: list[tuple[int, int]] = []
    for segment, is_answer in backbone.template.render(turns, add_generation_prompt):
        segment = segment.replace(IMAGE_PLACEHOLDER, expansion)
        if is_answer:
            supervised.append((len(text), len(text) + len(segment)))
        text += segment
    encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids = torch.tensor(encoding["input_ids"], dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, (start, end) in enumerate(encoding["offset_mapping"]):
        if end <= start:
            continue  # added bos/eos without a span
        trimmed = start
        while trimmed < end and text[trimmed].isspace():
            trimmed += 1
        if trimmed == end:
            trimmed = start
        if any(a <= trimmed and end <= b for a, b in supervised):
            labels[i] = ids[i]
    found = int((ids == backbone.image_token_id).sum())
    if found != num_images * backbone.num_image_tokens:
        raise ConfigError(
            f"{num_images} image(s) should give {num_images * backbone.num_image_tokens} image tokens, "
            f"the tokenizer produced {found}: {backbone.image_token!r} is not a single special token "
            f"of the tokenizer of {backbone.model_path}")
    return ids, labels


def _first_human(text: str) -> str:
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


def _with_placeholder(text: str) -> str:
    """LLaVA puts the image first when a record has an image but its text has no placeholder."""
    return text if IMAGE_PLACEHOLDER in text else f"{IMAGE_PLACEHOLDER}\n{text}"


def _image_pixels(record: dict, backbone: "LoadedBackbone | Encoder", root: Path, task: TaskSpec,
                  context: str, verifier: ImageVerifier | None = None
                  ) -> tuple[torch.Tensor | None, str | None, str | None]:
    """(pixels, resolved path, content identity) of the record's image; Nones without one."""
    if not record.get("image"):
        return None, None, None
    try:
        path = resolve_image(Path(root), task, record["image"])
    except DataError as exc:
        raise DataError(f"{exc.message} ({context})", hint=IMAGE_HINT) from None
    key = image_key(task.image_root, record["image"]) if verifier is not None else None
    image = load_image(path, context=context, verifier=verifier, key=key)
    return pixel_values([image], backbone.image_processor)[0], str(path), _identity(path, verifier, key)


def _identity(path: Path, verifier: ImageVerifier | None, key: str | None) -> str:
    """The manifest's sha256 of the image when there is a manifest, else its path, size and mtime."""
    entry = verifier.manifest.get(key) if verifier is not None and key is not None else None
    if entry is not None:
        return f"sha256:{entry.sha256}"
    stat = path.stat()
    return f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}"


def _context(task: TaskSpec, root: Path, filename: str, record: dict, key: str) -> str:
    """Where a record comes from, for image errors: task, annotation file and the record's id."""
    return f"task {task.name}, {Path(root) / filename}, {key} {record.get(key)!r}"


def _train_turns(record: dict) -> list[tuple[str, str]]:
    turns = [(turn["from"], turn["value"]) for turn in record["conversations"]]
    if record.get("image"):
        turns[0] = (turns[0][0], _with_placeholder(turns[0][1]))
    return turns


def _prompt_text(record: dict) -> str:
    return _with_placeholder(record["text"]) if record.get("image") else record["text"]


def encode_train(record: dict, backbone: "LoadedBackbone | Encoder", root: Path, task: TaskSpec,
                 task_index: int = 0, verifier: ImageVerifier | None = None) -> EncodedSample:
    """A training record: the whole conversation, answers supervised."""
    has_image = bool(record.get("image"))
    turns = _train_turns(record)
    ids, labels = encode_text(turns, backbone, num_images=int(has_image), add_generation_prompt=False)
    pixels, path, identity = _image_pixels(record, backbone, root, task,
                                           _context(task, root, task.train_file, record, "id"), verifier)
    return EncodedSample(ids, labels, pixels, record, _first_human(turns[0][1]), task_index, path, identity)


def encode_prompt(record: dict, backbone: "LoadedBackbone | Encoder", root: Path, task: TaskSpec,
                  task_index: int = 0, verifier: ImageVerifier | None = None) -> EncodedSample:
    """A test record as a generation prompt (ends with the assistant role, no answer)."""
    has_image = bool(record.get("image"))
    text = _prompt_text(record)
    ids, _ = encode_text([("human", text)], backbone, num_images=int(has_image), add_generation_prompt=True)
    pixels, path, identity = _image_pixels(record, backbone, root, task,
                                           _context(task, root, task.test_file, record, "question_id"), verifier)
    return EncodedSample(ids, None, pixels, record, _first_human(text), task_index, path, identity)


def token_lengths(records: Sequence[dict], backbone: "LoadedBackbone | Encoder", *,
                  prompts: bool = False) -> list[int]:
    """Each record's length in tokens, from its text alone (no image is opened).

    The conversation is rendered with the template and tokenised (in batches) with
    each ``<image>`` as a single image token, which is then counted as the image's
    ``num_image_tokens``: the length ``encode_train`` / ``encode_prompt`` give, up to
    how a tokenizer may split words next to the expanded image tokens.
    """
    encoder = Encoder.of(backbone)
    extra = encoder.num_image_tokens - 1
    lengths: list[int] = []
    for start in range(0, len(records), _LENGTH_CHUNK):  # in chunks: the token lists are not all held at once
        chunk = records[start:start + _LENGTH_CHUNK]
        texts = []
        for record in chunk:
            turns = [("human", _prompt_text(record))] if prompts else _train_turns(record)
            rendered = "".join(segment for segment, _ in encoder.template.render(turns, prompts))
            texts.append(rendered.replace(IMAGE_PLACEHOLDER, encoder.image_token))
        ids = encoder.tokenizer(texts, add_special_tokens=True)["input_ids"]
        lengths.extend(len(row) + (extra if record.get("image") else 0) for row, record in zip(ids, chunk))
    return lengths


_LENGTH_CHUNK = 256  # the tokenizer's batch output takes tens of kB a record: keep it small


# -- batches -----------------------------------------------------------------------------
def _as_generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    return generator


class TaskDataset:
    """A task's records, read and encoded one at a time (``dataset[i]`` is an EncodedSample).

    Records are kept as their compact JSON rows in one buffer (with the offsets
    of each row), not as Python objects: reading a row in a DataLoader worker
    then touches no reference counts, so forked workers do not copy the task
    page by page. ``dataset[i]`` decodes the record's image and tokenises it;
    ``lengths`` are token counts from the text alone (computed once, for
    length-grouped batching), ``with_image`` says which records have an image.

    ``specs`` maps task names to TaskSpecs (or is a list of them, or one spec);
    a record's task is ``record["_task"]`` (set by the engine and kept by replay
    methods), else ``task``, else the only spec. ``task_indices`` in batches are
    positions in ``specs``' order. ``prompts=True`` encodes test records as
    generation prompts (left padding) instead of training conversations.
    ``verify_images`` ("size" or "hash") is how images are checked against the
    benchmark's image manifest, when ``root`` has one.
    """

    def __init__(self, records: Sequence[dict], *, backbone: "LoadedBackbone | Encoder", root: Path,
                 specs: Mapping[str, TaskSpec] | Sequence[TaskSpec] | TaskSpec,
                 task: str | None = None, prompts: bool = False, verify_images: str = "size"):
        if isinstance(specs, TaskSpec):
            specs = [specs]
        by_name = dict(specs) if isinstance(specs, Mapping) else {s.name: s for s in specs}
        index = {name: i for i, name in enumerate(by_name)}
        if task is None and len(by_name) == 1:
            task = next(iter(by_name))
        self.specs = list(by_name.values())
        self.encoder = Encoder.of(backbone)
        self.root = Path(root)
        self.prompts = prompts
        self.pad_token_id = _pad_id(self.encoder.tokenizer)
        self.verifier = verifier_for(self.root, verify_images)
        self._tasks = array("i")
        rows: list[bytes] = []
        for i, record in enumerate(records):
            name = record.get(TASK_KEY, task)
            if name not in by_name:
                raise DataError(f"record {i} (id {record.get('id', record.get('question_id'))!r}) belongs to "
                                f"task {name!r}, which is not among {sorted(by_name)}")
            self._tasks.append(index[name])
            rows.append(_json_row(record, i))
        self._offsets = array("q", [0])
        total = 0
        for row in rows:
            total += len(row)
            self._offsets.append(total)
        self._rows = b"".join(rows)
        self.lengths = array("i", token_lengths(records, self.encoder, prompts=prompts))
        self.with_image = bytes(bool(r.get("image")) for r in records)

    def __len__(self) -> int:
        return len(self._tasks)

    def record(self, i: int) -> dict:
        """Record ``i`` as loaded (a fresh dict), without encoding it."""
        return json.loads(self._rows[self._offsets[i]:self._offsets[i + 1]])

    def __getitem__(self, i: int) -> EncodedSample:
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} of a dataset of {len(self)}")
        encode = encode_prompt if self.prompts else encode_train
        task_index = self._tasks[i]
        return encode(self.record(i), self.encoder, self.root, self.specs[task_index], task_index, self.verifier)

    def modality_lengths(self) -> list[int]:
        """Token counts signed by modality (LLaVA's convention): positive with an image, negative without."""
        return [n if image else -n for n, image in zip(self.lengths, self.with_image)]

    def batches(self, batch_size: int, *, generator: torch.Generator | int | None = None,
                shuffle: bool = True, drop_last: bool = False,
                padding_side: str | None = None) -> Iterator[Batch]:
        """One pass in a deterministic order: a permutation drawn from ``generator`` (or a seed).

        Passing the same Generator to successive calls gives a fresh, reproducible
        order each epoch. Records are encoded as the batches are made (in this process).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=_as_generator(generator)).tolist()
        else:
            order = list(range(n))
        for start in range(0, n, batch_size):
            chunk = order[start:start + batch_size]
            if drop_last and len(chunk) < batch_size:
                return
            yield self.batch(chunk, padding_side=padding_side)

    def batch(self, indices: Sequence[int], padding_side: str | None = None) -> Batch:
        """The samples at ``indices`` encoded and collated into one batch."""
        return self.collator(padding_side)([self[i] for i in indices])

    def collator(self, padding_side: str | None = None) -> "Collator":
        """The picklable collate function of this dataset (for DataLoader workers)."""
        return Collator(self.pad_token_id, padding_side or ("left" if self.prompts else "right"))


@dataclass(frozen=True)
class Collator:
    """``collate`` with its padding fixed, as a picklable callable."""

    pad_token_id: int
    padding_side: str

    def __call__(self, samples: Sequence[EncodedSample]) -> Batch:
        return collate(samples, self.pad_token_id, self.padding_side)


def _json_row(record: dict, index: int) -> bytes:
    try:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise PrismError(f"record {index} (id {record.get('id', record.get('question_id'))!r}) cannot be kept "
                         f"as a JSON row: {exc}", hint="records (and what methods add to them) must be JSON data") from None


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigError("the tokenizer has neither a pad nor an eos token to pad batches with")
    return int(pad)
