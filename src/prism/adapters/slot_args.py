"""Normalising the arguments AdapterSet takes for slots and their fixed weights."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence


def slot_list(slots: str | Iterable[str]) -> list[str]:
    """A list of slot names; a bare string is one name, not its characters."""
    return [slots] if isinstance(slots, str) else list(slots)


def resolve_weights(
    slots: Sequence[str] | Mapping[str, float] | None,
    weights: Sequence[float] | Mapping[str, float] | None,
) -> tuple[list[str] | None, tuple[float, ...] | None]:
    """Normalise ``activate``'s arguments to (slot names, fixed weights or None when all are 1)."""
    if isinstance(slots, Mapping):
        if weights is not None:
            raise ValueError("give weights either as a mapping in `slots` or in `weights`, not both")
        names, values = list(slots), [float(v) for v in slots.values()]
    elif slots is None:
        if weights is not None:
            raise ValueError("fixed weights need an explicit list of slots")
        return None, None
    else:
        names = slot_list(slots)
        if weights is None:
            values = [1.0] * len(names)
        elif isinstance(weights, Mapping):
            extra = set(weights) - set(names)
            if extra:
                raise ValueError(f"weights given for inactive slot(s) {sorted(extra)}")
            values = [float(weights.get(n, 1.0)) for n in names]
        else:
            values = [float(w) for w in weights]
            if len(values) != len(names):
                raise ValueError(f"{len(values)} weights for {len(names)} slots")
    if len(set(names)) != len(names):
        raise ValueError(f"slot listed twice in {names}")
    return names, None if all(v == 1.0 for v in values) else tuple(values)
