"""Per-task anchors: running means of routing embeddings (HiDe-LLaVA anchors, DisCo prototypes).

Anchors are the stored side of routing: made by one routing tower while
training, saved in a checkpoint, and compared with another input's embeddings
at inference — possibly in another run with another ``[backbone] routing_tower``.
So every entry point checks the feature dimension and, on load, the tower's
fingerprint: anchors from another tower would route silently wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from prism.backbones.routing import check_feature_dim
from prism.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import torch

    from prism.backbones.routing import RoutingTower


class TaskAnchors:
    """One anchor per task: the mean of every embedding added for it (float32, on the CPU)."""

    def __init__(self, name: str, dim: int, *, tower: str | None = None, fingerprint: str | None = None):
        self.name = name  # e.g. "image" or "text": used in messages and state keys
        self.dim = int(dim)
        self.tower = tower
        self.fingerprint = fingerprint
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    @classmethod
    def for_tower(cls, name: str, tower: "RoutingTower") -> "TaskAnchors":
        return cls(name, tower.dim, tower=tower.source, fingerprint=tower.fingerprint)

    @property
    def tasks(self) -> list[str]:
        return list(self._sums)

    def add(self, task: str, features: "torch.Tensor") -> None:
        """Fold ``[N, dim]`` embeddings into ``task``'s running mean."""
        check_feature_dim(features, self.dim, f"{self.name} anchors of task {task!r}", tower=self.tower)
        rows = features.detach().float().cpu().reshape(-1, self.dim)
        if task in self._sums:
            self._sums[task] = self._sums[task] + rows.sum(0)
        else:
            self._sums[task] = rows.sum(0)
        self._counts[task] = self._counts.get(task, 0) + rows.shape[0]

    def forget(self, task: str) -> None:
        """Drop ``task``'s anchor (a task trained again gets a fresh one)."""
        self._sums.pop(task, None)
        self._counts.pop(task, None)

    def matrix(self, tasks: Sequence[str] | None = None) -> "torch.Tensor":
        """``[T, dim]`` unit-length anchors of ``tasks`` (default: all, in the order added)."""
        import torch

        names = list(tasks) if tasks is not None else self.tasks
        missing = [t for t in names if t not in self._sums]
        if missing:
            raise ConfigError(f"no {self.name} anchors for task(s) {', '.join(missing)}; have: "
                              f"{', '.join(self.tasks) or 'none'}")
        if not names:
            return torch.zeros(0, self.dim)
        means = torch.stack([self._sums[t] / self._counts[t] for t in names])
        return torch.nn.functional.normalize(means, dim=-1)

    def similarities(self, features: "torch.Tensor", tasks: Sequence[str] | None = None) -> "torch.Tensor":
        """Cosine similarity ``[N, T]`` of unit-length ``features`` with each task's anchor."""
        check_feature_dim(features, self.dim, f"{self.name} features compared with the anchors", tower=self.tower)
        anchors = self.matrix(tasks).to(features.device)
        return features.float() @ anchors.T

    # -- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, "torch.Tensor"]:
        import torch

        state = {f"{self.name}_anchor_sum.{t}": s.clone() for t, s in self._sums.items()}
        state.update({f"{self.name}_anchor_count.{t}": torch.tensor(c) for t, c in self._counts.items()})
        return state

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "tower": self.tower, "fingerprint": self.fingerprint,
                "tasks": self.tasks}

    @classmethod
    def from_state(cls, tensors: dict[str, "torch.Tensor"], metadata: dict[str, Any], tower: "RoutingTower",
                   where: str) -> "TaskAnchors":
        """Anchors saved by ``state_dict``/``metadata``, checked against the tower that will use them."""
        name = metadata["name"]
        check_feature_dim(int(metadata["dim"]), tower.dim, f"{where}: {name} anchors (made by "
                          f"{metadata.get('tower')!r})", tower=tower.source, error=CheckpointError)
        if metadata.get("fingerprint") and metadata["fingerprint"] != tower.fingerprint:
            raise CheckpointError(
                f"{where}: the {name} anchors were made by routing tower {metadata.get('tower')!r} "
                f"(fingerprint {metadata['fingerprint']}), not by {tower.source!r} ({tower.fingerprint})",
                hint="set [backbone] routing_tower to the tower the checkpoint was trained with")
        anchors = cls(name, tower.dim, tower=tower.source, fingerprint=tower.fingerprint)
        for task in metadata["tasks"]:
            total = tensors[f"{name}_anchor_sum.{task}"]
            check_feature_dim(total, tower.dim, f"{where}: {name} anchor of task {task!r}", tower=tower.source,
                              error=CheckpointError)
            anchors._sums[task] = total.float().cpu()
            anchors._counts[task] = int(tensors[f"{name}_anchor_count.{task}"])
        return anchors
