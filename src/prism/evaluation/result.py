"""The value every per-task metric returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class MetricResult:
    """A task's score (0-100) plus what is needed to audit it.

    ``per_item`` is on the same 0-100 scale as ``score`` and in the order of the
    predictions given (``None`` when a metric has no meaningful per-item value).
    ``details`` holds sub-metrics (e.g. ``BLEU_1`` or ``exact_match_normalized``)
    and counts; ``unavailable`` maps a sub-metric that could not be computed to
    the reason, so a partial score is never silently presented as a full one.
    """

    score: float
    n: int
    per_item: list[float] | None = None
    details: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
