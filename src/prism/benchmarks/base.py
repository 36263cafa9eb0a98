"""A benchmark is an ordered list of tasks whose data lives under one root folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from prism.config.schema import BenchmarkConfig


@dataclass(frozen=True)
class TaskSpec:
    """One task: its files (relative to the benchmark root) and how it is scored."""

    name: str
    train_file: str  # LLaVA conversation JSON
    test_file: str  # test JSON (question_id, image, text, answer)
    metric: str  # id in the metric registry
    max_new_tokens: int = 16
    image_root: str = "."  # images are resolved under root/image_root
    gt_file: str | None = None  # COCO-format caption ground truth, for caption metrics
    metric_options: tuple[tuple[str, Any], ...] = ()  # passed to the metric as options=dict(...)


class Benchmark:
    """A registered benchmark. ``prepare`` returns the root folder holding its files."""

    id: ClassVar[str] = ""
    tasks: ClassVar[list[TaskSpec]] = []
    #: True when ``prepare`` writes the data itself (generates or downloads it): then
    #: ``[benchmark] root`` need not exist before a run; otherwise a missing root is a config error
    creates_data: ClassVar[bool] = False

    def __init__(self, config: "BenchmarkConfig", project_dir: Path):
        self.config = config
        self.project_dir = project_dir

    @property
    def root(self) -> Path:
        root = Path(self.config.root).expanduser()
        return root if root.is_absolute() else (self.project_dir / root)

    def prepare(self) -> Path:
        """Make sure the data is present (generate it, for synthetic) and return the root."""
        return self.root

    def task_specs(self) -> list[TaskSpec]:
        return list(self.tasks)
