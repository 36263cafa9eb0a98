"""Tokenised samples and the padded batches a model trains or generates on.

``collate`` pads ``EncodedSample``s to one length on the tokenizer's padding
side; label positions that are not supervised hold ``IGNORE_INDEX``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass
class EncodedSample:
    """One record, tokenised: what ``collate`` stacks into a Batch."""

    input_ids: torch.Tensor  # (L,) long
    labels: torch.Tensor | None  # (L,) long, IGNORE_INDEX where not supervised; None for prompts
    pixel_values: torch.Tensor | None  # (3, H, W) or None without image
    record: dict
    instruction: str  # first human turn without <image>, stripped (what routers look at)
    task_index: int = 0
    image_path: str | None = None  # the resolved image file (None without image)
    #: the image's content identity: sha256 from the benchmark's image manifest, else path, size and mtime
    image_id: str | None = None


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
    #: per sample: its task's position in the dataset's task list; in training batches that is the
    #: task's run position (``TaskContext.index``), replayed samples included. Evaluation batches
    #: hold one task and never say which (a method learns it only from an explicit oracle).
    task_indices: list[int] = field(default_factory=list)
    #: per sample: the resolved image file and its content identity (None without image)
    image_paths: list[str | None] = field(default_factory=list)
    image_ids: list[str | None] = field(default_factory=list)

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
        image_paths=[s.image_path for s in samples],
        image_ids=[s.image_id for s in samples],
    )
