"""From benchmark files on disk to model batches.

Loading validates every record and names the file and record index of the
first bad one. Encoding renders a conversation with the backbone's template,
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

import io
import json
import os
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prism.benchmarks.base import TaskSpec
from prism.benchmarks.image_manifest import ImageVerifier, image_key, verifier_for
from prism.errors import ConfigError, DataError, PrismError

if TYPE_CHECKING:
    from PIL import Image

    from prism.backbones.base import LoadedBackbone
    from prism.backbones.template import ConversationTemplate

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
#: Key the engine (and replay methods) set on a record: the name of the task it belongs to.
TASK_KEY = "_task"

_ROLES = ("human", "gpt")


# -- reading annotation files ------------------------------------------------------------
def _read_list(path: Path, what: str) -> list[Any]:
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}",
                        hint="check [benchmark] root and that the benchmark's files are unpacked there")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read {what} file {path}: {exc}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _bad(path: Path, index: int, problem: str) -> DataError:
    return DataError(f"{path}: record {index}: {problem}")


def _check_image_field(record: dict, path: Path, index: int) -> None:
    if "image" in record and record["image"] is not None and not isinstance(record["image"], str):
        raise _bad(path, index, f"'image' must be a path string, got {type(record['image']).__name__}"
                   " (multi-image records are not supported)")


def validate_train_record(record: Any, path: Path, index: int) -> None:
    """Raise DataError unless ``record`` is a LLaVA conversation record prism can train on."""
    if not isinstance(record, dict):
        raise _bad(path, index, f"expected an object, got {type(record).__name__}")
    _check_image_field(record, path, index)
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise _bad(path, index, "'conversations' must be a non-empty list")
    placeholders = 0
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise _bad(path, index, f"conversations[{t}] must be an object with a string 'value'")
        expected = _ROLES[t % 2]
        if turn.get("from") != expected:
            raise _bad(path, index, f"conversations[{t}] is from {turn.get('from')!r}, expected {expected!r} "
                       "(turns alternate human/gpt, starting with human)")
        if IMAGE_PLACEHOLDER in turn["value"] and expected == "gpt":
            raise _bad(path, index, f"conversations[{t}]: an answer contains {IMAGE_PLACEHOLDER}")
        placeholders += turn["value"].count(IMAGE_PLACEHOLDER)
    if turns[-1].get("from") != "gpt":
        raise _bad(path, index, "the conversation ends with a human turn (nothing to learn)")
    has_image = bool(record.get("image"))
    if placeholders > 1:
        raise _bad(path, index, f"{placeholders} {IMAGE_PLACEHOLDER} placeholders (one image per record)")
    if placeholders and not has_image:
        raise _bad(path, index, f"the text has {IMAGE_PLACEHOLDER} but the record has no 'image'")


def validate_test_record(record: Any, path: Path, index: int) -> None:
    """Raise DataError unless ``record`` has question_id, text and answer (image optional)."""
    if not isinstance(record, dict):
        raise _bad(path, index, f"expected an object, got {type(record).__name__}")
    qid = record.get("question_id")
    if not isinstance(qid, (int, str)) or isinstance(qid, bool):
        raise _bad(path, index, "'question_id' must be an integer or a string")
    if not isinstance(record.get("text"), str):
        raise _bad(path, index, "'text' must be a string")
    answer = record.get("answer")
    if not (isinstance(answer, str) or (isinstance(answer, list) and all(isinstance(a, str) for a in answer))):
        raise _bad(path, index, "'answer' must be a string or a list of strings")
    _check_image_field(record, path, index)
    if record["text"].count(IMAGE_PLACEHOLDER) > 1:
        raise _bad(path, index, f"more than one {IMAGE_PLACEHOLDER} in 'text'")
    if IMAGE_PLACEHOLDER in record["text"] and not record.get("image"):
        raise _bad(path, index, f"the text has {IMAGE_PLACEHOLDER} but the record has no 'image'")


def _cap(records: list[dict], max_samples: int | None) -> list[dict]:
    if max_samples is None:
        return records
    if max_samples < 1:
        raise ConfigError(f"max_samples must be at least 1, got {max_samples}")
    return records[:max_samples]


def load_train_records(root: Path, task: TaskSpec, max_samples: int | None = None) -> list[dict]:
    """The task's training records (validated), the first ``max_samples`` of them if given."""
    path = Path(root) / task.train_file
    records = _read_list(path, f"training ({task.name})")
    for i, record in enumerate(records):
        validate_train_record(record, path, i)
    return _cap(records, max_samples)


def load_test_records(root: Path, task: TaskSpec, max_samples: int | None = None) -> list[dict]:
    """The task's test records (validated, unique question ids), capped at ``max_samples``."""
    path = Path(root) / task.test_file
    records = _read_list(path, f"test ({task.name})")
    seen: dict[str, int] = {}
    for i, record in enumerate(records):
        validate_test_record(record, path, i)
        key = str(record["question_id"])
        if key in seen:
            raise _bad(path, i, f"question_id {record['question_id']!r} repeats record {seen[key]} "
                       "(predictions are keyed by question_id)")
        seen[key] = i
    return _cap(records, max_samples)


# -- images ------------------------------------------------------------------------------
def resolve_image(root: Path, task: TaskSpec, relpath: str) -> Path:
    """The file ``root/image_root/relpath`` really is; one outside that folder is a DataError.

    The one confinement check of image paths (``prism data check``, training and
    evaluation all use it). Both the image root and the path are resolved,
    symlinks included, before the check: an image root that is itself a link
    to shared storage works, a file linking to another file of the folder
    works, but an image whose link leads out of the folder does not.
    """
    base = os.path.realpath(os.path.join(os.fspath(root), task.image_root))
    if os.path.isabs(relpath):
        raise DataError(f"image path {relpath!r} of task {task.name!r} is absolute; "
                        f"image paths must be relative to {base}")
    full = os.path.realpath(os.path.join(base, relpath))
    if not _inside(full, base):
        if _inside(os.path.normpath(os.path.join(base, relpath)), base):
            raise DataError(f"image path {relpath!r} of task {task.name!r} leads through a symlink to "
                            f"{full}, outside the image root {base}")
        raise DataError(f"image path {relpath!r} of task {task.name!r} escapes the image root {base}")
    return Path(full)


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([folder, path]) == folder


#: What a run's image errors suggest: the check lists them all (a run stops at the first).
IMAGE_HINT = "`prism data check` lists every image that is missing, cannot be decoded or lies outside its root"


def decode_failure(exc: BaseException, path: Path) -> str:
    """``Type: message`` of a PIL failure, without the path when PIL's message repeats it."""
    said = str(exc)
    return type(exc).__name__ + (f": {said}" if said and str(path) not in said else "")


def load_image(path: Path, *, context: str = "", verifier: ImageVerifier | None = None,
               key: str | None = None) -> "Image.Image":
    """Open an image as RGB; a missing or undecodable file is a DataError naming it.

    Anything PIL raises counts as undecodable, as in ``prism data check``: its
    errors are of many types, and a header claiming a huge size raises
    DecompressionBombError, which is not an OSError. With a ``verifier`` (the
    benchmark has an image manifest) the file is first checked against the
    manifest's entry ``key``; in hash mode the bytes read for the hash are decoded.
    """
    from PIL import Image

    where = f" ({context})" if context else ""
    data = None
    if verifier is not None:
        data = verifier.read(path, key or str(path), where)
    elif not path.is_file():
        raise DataError(f"image not found: {path}{where}", hint=IMAGE_HINT)
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            return image.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise DataError(f"cannot decode image {path}{where}: {decode_failure(exc, path)}",
                        hint=IMAGE_HINT) from None


def pixel_values(images: list["Image.Image"], image_processor: Any) -> torch.Tensor:
    """Preprocess images with the backbone's processor: (N, 3, H, W) float tensor."""
    return image_processor(images=images, return_tensors="pt")["pixel_values"]


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


@dataclass
class EncodedSample:
    """One record, tokenised: what ``collate`` stacks into a Batch."""

    input_ids: torch.Tensor  # (L,) long
    labels: torch.Tensor | None  # (L,) long, IGNORE_INDEX where not supervised; None for prompts
    pixel_values: torch.Tensor | None  # (3, H, W) or None without image
    record: dict
    instruction: str  # first human turn without <image>, stripped (what routers look at)
    task_index: int = 0


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
                  context: str, verifier: ImageVerifier | None = None) -> torch.Tensor | None:
    if not record.get("image"):
        return None
    try:
        path = resolve_image(Path(root), task, record["image"])
    except DataError as exc:
        raise DataError(f"{exc.message} ({context})", hint=IMAGE_HINT) from None
    key = image_key(task.image_root, record["image"]) if verifier is not None else None
    image = load_image(path, context=context, verifier=verifier, key=key)
    return pixel_values([image], backbone.image_processor)[0]


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
    pixels = _image_pixels(record, backbone, root, task, _context(task, root, task.train_file, record, "id"),
                           verifier)
    return EncodedSample(ids, labels, pixels, record, _first_human(turns[0][1]), task_index)


def encode_prompt(record: dict, backbone: "LoadedBackbone | Encoder", root: Path, task: TaskSpec,
                  task_index: int = 0, verifier: ImageVerifier | None = None) -> EncodedSample:
    """A test record as a generation prompt (ends with the assistant role, no answer)."""
    has_image = bool(record.get("image"))
    text = _prompt_text(record)
    ids, _ = encode_text([("human", text)], backbone, num_images=int(has_image), add_generation_prompt=True)
    pixels = _image_pixels(record, backbone, root, task,
                           _context(task, root, task.test_file, record, "question_id"), verifier)
    return EncodedSample(ids, None, pixels, record, _first_human(text), task_index)


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
@dataclass
class Batch:
    """Padded tensors plus what methods need to route or replay (records, instructions, tasks).

    ``pixel_values`` holds the images of the samples that have one, in batch
    order: LLaVA scatters image features into the image-token positions in order.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    pixel_values: torch.Tensor | None
    records: list[dict] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)
    task_indices: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``model(**...)`` / ``model.generate(**...)``."""
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.labels is not None:
            inputs["labels"] = self.labels
        if self.pixel_values is not None:
            inputs["pixel_values"] = self.pixel_values
        return inputs

    def to(self, device: Any) -> "Batch":
        """On ``device``; pinned tensors (DataLoader ``pin_memory``) are copied asynchronously."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=t.is_pinned())

        return replace(self, input_ids=move(self.input_ids), attention_mask=move(self.attention_mask),
                       labels=move(self.labels), pixel_values=move(self.pixel_values))

    def pin_memory(self) -> "Batch":
        """Page-locked copies of the tensors (DataLoader calls this with ``pin_memory=True``)."""
        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()

        return replace(self, input_ids=pin(self.input_ids), attention_mask=pin(self.attention_mask),
                       labels=pin(self.labels), pixel_values=pin(self.pixel_values))


def collate(samples: Sequence[EncodedSample], pad_token_id: int, padding_side: str) -> Batch:
    """Pad to the longest sample: ``"right"`` for training, ``"left"`` for generation."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    length = max(len(s.input_ids) for s in samples)
    n = len(samples)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    with_labels = all(s.labels is not None for s in samples)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long) if with_labels else None
    for row, sample in enumerate(samples):
        size = len(sample.input_ids)
        cols = slice(length - size, length) if padding_side == "left" else slice(0, size)
        input_ids[row, cols] = sample.input_ids
        attention_mask[row, cols] = 1
        if labels is not None:
            labels[row, cols] = sample.labels
    images = [s.pixel_values for s in samples if s.pixel_values is not None]
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        pixel_values=torch.stack(images) if images else None,
        records=[s.record for s in samples],
        instructions=[s.instruction for s in samples],
        task_indices=[s.task_index for s in samples],
    )


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
