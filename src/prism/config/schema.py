"""The core schema of ``prism.toml`` (phase one of validation).

Every table forbids unknown keys so that a typo is an error, not a silently
ignored setting. Method hyper-parameters are the exception: ``[method.<id>]``
tables are plain dicts here and are validated in phase two by the selected
method's own ``Params`` model (see ``prism.config.loader``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prism.errors import ConfigError
from prism.registry import did_you_mean

__all__ = [
    "BackboneConfig",
    "BenchmarkConfig",
    "InferConfig",
    "MethodConfig",
    "PluginsConfig",
    "PrismConfig",
    "ProjectConfig",
    "TrainConfig",
    "TaskOverride",
]


class _Table(BaseModel):
    """Base of every core table: unknown keys are errors, assignments are checked.

    Numbers given for text settings become text (``PRISM_PROJECT__NAME=2024``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class ProjectConfig(_Table):
    """[project]: naming, where outputs go, the global seed."""

    name: str = Field("prism-demo", min_length=1, description="run name, used in reports")
    output_dir: str = Field(
        "outputs", min_length=1,
        description="where checkpoints, predictions and reports go; relative to the project dir",
    )
    seed: int = Field(42, ge=0, description="seed for training (data order, init)")


class BackboneConfig(_Table):
    """[backbone]: which model family and which weights."""

    id: str = Field("llava", min_length=1, description="registered backbone id (llava, internvl)")
    model: str = Field(
        "builtin:tiny-llava", min_length=1,
        description="local path, hub id, or builtin:tiny-llava / builtin:tiny-internvl",
    )
    train_precision: Literal["fp32", "bf16", "fp16", "8bit", "4bit"] = Field(
        "fp32", description="how prism train loads and trains the model; 8bit/4bit quantise the language "
        "model with bitsandbytes (QLoRA)",
    )
    attn: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="attention implementation; auto = flash_attention_2 if usable, else sdpa",
    )
    routing_tower: str | None = Field(
        None, description="encoder for routing features (methods that route by CLIP embeddings)",
    )
    vision_tower: str | None = Field(
        None, description="vision tower folder (or cached hub id) for an original LLaVA-1.5 checkpoint; "
        "overrides its config.json mm_vision_tower",
    )


def per_task_tables(value: Any, model: type[BaseModel], example: str) -> dict[str, Any] | None:
    """Validate a ``{task name: table}`` setting entry by entry so messages name the task and key.

    The loader can only point at such a setting as a whole (a dict of models is
    not a table it can walk), so the task name must be in the text.
    """
    if value is None or value == {}:
        return None  # "not set", like the other optional keys
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of task tables, e.g. {example}")
    known = list(model.model_fields)
    problems: list[str] = []
    checked: dict[str, Any] = {}
    for task, table in value.items():
        if isinstance(table, model):
            checked[task] = table
            continue
        if not isinstance(table, dict):
            problems.append(f"overrides.{task}: expected a table of {', '.join(known)}")
            continue
        unknown = [key for key in table if key not in known]
        for key in unknown:
            problems.append(f"overrides.{task}: unknown key {key!r}{did_you_mean(key, known)}; "
                            f"allowed: {', '.join(known)}")
        if unknown:
            continue
        try:
            checked[task] = model.model_validate(table)
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"])
                problems.append(f"overrides.{task}.{where}: {error['msg']} (got {error.get('input')!r})")
    if problems:
        raise ValueError("; ".join(problems))
    return checked


class TaskOverride(_Table):
    """[benchmark.overrides."<task>"]: replace what the benchmark found for one task.

    Paths are relative to ``benchmark.root`` (absolute paths work too) and are
    used as given: no file discovery and no ``_sub`` suffix.
    """

    train_file: str | None = Field(None, min_length=1, description="training JSON (LLaVA conversations)")
    test_file: str | None = Field(None, min_length=1, description="test JSON (question_id, text, answer)")
    gt_file: str | None = Field(None, min_length=1, description="COCO caption ground truth")
    image_root: str | None = Field(None, min_length=1, description="folder the records' image paths start from")
    metric: str | None = Field(None, min_length=1, description="metric id (exact_match, anls, coco_caption, ...)")
    max_new_tokens: int | None = Field(None, ge=1, description="generation cap for this task")


class BenchmarkConfig(_Table):
    """[benchmark]: the task sequence and its data."""

    id: str = Field("synthetic", min_length=1, description="registered benchmark id")
    root: str = Field("data/synthetic", min_length=1,
                      description="data folder; relative to the project dir")
    tasks: str | list[int | str] | None = Field(
        None, description="None/'all' = every task; '0-4', '0,2,3', [0, 2] or task names",
    )
    max_train_samples: int | None = Field(None, ge=1, description="cap per task (None: all)")
    max_test_samples: int | None = Field(None, ge=1, description="cap per task (None: all)")
    seed: int = Field(0, ge=0, description="data generation seed for generated benchmarks")
    sub_dataset: bool = Field(False, description="use the benchmark's published subset")
    fix_policy: Literal["error", "skip"] = Field(
        "error", description="bad training records: stop with an error, or skip them with one warning",
    )
    verify_images: Literal["size", "hash"] = Field(
        "size", description="with an image manifest (prism_images.sha256): check each image's size, "
        "or its sha256 too, when it is read",
    )
    overrides: dict[str, TaskOverride] | None = Field(
        None, description="per-task replacements of files, image root, metric, max_new_tokens "
        "(None: the benchmark's defaults for every task)",
    )

    @field_validator("overrides", mode="before")
    @classmethod
    def _overrides_shape(cls, value: Any) -> Any:
        return per_task_tables(value, TaskOverride, '[benchmark.overrides."ImageNet-R"]')

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks_shape(cls, value: Any) -> Any:
        """One clear message instead of pydantic's per-union-member errors."""
        if isinstance(value, bool):
            raise ValueError("expected 'all', a range like '0-4', a list like [0, 2] or task names")
        if isinstance(value, int):
            return [value]
        if isinstance(value, str) and not value.strip():
            # an empty --tasks "" is a slip, not a request for every task
            raise ValueError("empty; leave it out (or give 'all') for every task, "
                             "or select some: '0-4', '0,2,3', task names")
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, str)) and not isinstance(v, bool) for v in value
        ):
            return list(value)
        raise ValueError("expected 'all', a range like '0-4', a list like [0, 2] or task names")


class MethodConfig(BaseModel):
    """[method]: the continual-learning method and its ``[method.<id>]`` tables.

    Extra keys are allowed but must be tables; which table names and which keys
    inside them are valid is decided in phase two by the method registry.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, coerce_numbers_to_str=True)
    __pydantic_extra__: dict[str, dict[str, Any]] = Field(init=False)

    id: str = Field("ft_lora", min_length=1, description="registered method id")

    @property
    def tables(self) -> dict[str, dict[str, Any]]:
        """The ``[method.<id>]`` tables by method id."""
        return dict(self.model_extra or {})

    def table(self, method_id: str) -> dict[str, Any]:
        return dict((self.model_extra or {}).get(method_id, {}))


class TrainOverride(_Table):
    """[train.overrides."<task>"]: optimisation settings for one task (PRISM's per-task batch sizes)."""

    lr: float | None = Field(None, gt=0, description="peak learning rate for this task")
    epochs: float | None = Field(None, gt=0, description="epochs for this task")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps for this task")
    global_batch_size: int | None = Field(None, ge=1, description="samples per optimizer step for this task")
    micro_batch_size: int | None = Field(None, ge=1, description="samples per forward pass for this task")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="warm-up fraction for this task")
    weight_decay: float | None = Field(None, ge=0, description="AdamW weight decay for this task")
    projector_lr: float | None = Field(None, gt=0, description="projector learning rate for this task")


class TrainConfig(_Table):
    """[train]: optimisation, per task."""

    lr: float = Field(2e-4, gt=0, description="peak learning rate of the trainable parameters")
    epochs: float = Field(1.0, gt=0, description="epochs per task (ignored when max_steps is set)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps per task; overrides epochs")
    global_batch_size: int = Field(16, ge=1, description="samples per optimizer step, all devices")
    micro_batch_size: int | None = Field(
        None, ge=1, description="samples per forward pass per device (None: as large as global)",
    )
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay shape")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="fraction of steps spent warming up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping (None: off)")
    projector_lr: float | None = Field(
        None, gt=0, description="learning rate of the projector when a method trains it (None: lr)",
    )
    gradient_checkpointing: bool = Field(False, description="trade compute for memory")
    log_every: int = Field(1, ge=1, description="write a metrics.jsonl line every N steps")
    save_every_steps: int = Field(
        100, ge=0, description="step checkpoint every N steps for mid-task resume (0: only at task end)",
    )
    report_to: list[str] = Field(
        default_factory=list, description="trackers fed through accelerate (tensorboard, wandb, ...)",
    )
    eval_after_each_task: bool = Field(True, description="fill the accuracy matrix row by row")
    num_workers: int | None = Field(
        None, ge=0, description="DataLoader workers per process decoding images (None: from the CPU count "
        "on a GPU, 0 on the CPU)",
    )
    group_by_modality_length: bool | None = Field(
        None, description="batches of similar length, image and text-only samples apart, as LLaVA's "
        "trainer (None: on; false: plain seeded shuffling)",
    )

    overrides: dict[str, TrainOverride] | None = Field(
        None, description="per-task lr, epochs, max_steps, batch sizes, warm-up, weight decay, projector lr",
    )

    @field_validator("overrides", mode="before")
    @classmethod
    def _overrides_shape(cls, value: Any) -> Any:
        return per_task_tables(value, TrainOverride, '[train.overrides."ImageNet-R"]')

    def for_task(self, name: str) -> "TrainConfig":
        """These settings with the task's overrides applied (the task name as in the benchmark)."""
        override = (self.overrides or {}).get(name)
        if override is None:
            return self
        changes = {k: v for k, v in override.model_dump().items() if v is not None}
        try:
            return TrainConfig.model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            message = "; ".join(str(e["msg"]) for e in exc.errors())
            raise ConfigError(f'[train.overrides."{name}"]: {message}') from None

    @model_validator(mode="after")
    def _micro_fits_global(self) -> "TrainConfig":
        if self.micro_batch_size is not None and self.micro_batch_size > self.global_batch_size:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) is larger than "
                f"global_batch_size ({self.global_batch_size})"
            )
        return self


class InferConfig(_Table):
    """[infer]: generation for evaluation."""

    batch_size: int = Field(32, ge=1, description="samples per generate call")
    max_new_tokens: int | None = Field(
        None, ge=1, description="cap on generated tokens (None: the benchmark's per-task default)",
    )
    temperature: float = Field(0.0, ge=0, description="0 = greedy decoding")
    num_beams: int = Field(1, ge=1, description="beam search width")
    task_oracle: bool | None = Field(
        None, description="give methods each test sample's true task at evaluation (an oracle, as the "
        "SMoLoRA release does; recorded in the results). None/false: methods route on the input alone",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16", "8bit", "4bit"] = Field(
        "auto", description="how prism infer loads the model; auto = [backbone] train_precision "
        "(prism train evaluates with the model it trains)",
    )
    feature_cache: Literal["memory", "disk", "off"] = Field(
        "memory", description="cache the frozen vision tower's output per test image (keyed by the image's "
        "pixel hash + the tower's fingerprint), so later matrix rows skip the tower: memory (within a run), "
        "disk (also under <output>/cache/vision_features, reused by later runs), off",
    )


class PluginsConfig(_Table):
    """[plugins]: which installed plugins to ignore for this project."""

    disable: list[str] = Field(default_factory=list, description="plugin names not to load")


class DistributedConfig(_Table):
    """[distributed]: how many processes train, and with which engine (DDP or DeepSpeed)."""

    nproc: int = Field(1, ge=1, description="training processes (one per GPU); > 1 relaunches under torchrun")
    gpus: str | None = Field(
        None, pattern=r"^\d+(,\d+)*$",
        description="GPU ids to use, e.g. \"0,1,2,3\" (sets CUDA_VISIBLE_DEVICES and nproc)",
    )
    backend: Literal["ddp", "deepspeed"] = Field("ddp", description="distributed engine")
    zero_stage: Literal[2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    offload: bool = Field(False, description="DeepSpeed: offload optimizer states (and ZeRO-3 params) to CPU")
    deepspeed_config: str | None = Field(
        None, min_length=1,
        description="a DeepSpeed JSON file, or a preset: zero2, zero3, zero3_offload (None: from zero_stage/offload)",
    )
    master_port: int | None = Field(
        None, ge=1, le=65535,
        description="rendezvous port (None: a free one on one node; with several nodes 29500, or from the SLURM job id)")
    nnodes: int = Field(1, ge=1, description="machines taking part (torchrun --nnodes), each running nproc processes; "
                                             "1: one machine, or SLURM's node count under SLURM")
    node_rank: int = Field(0, ge=0, description="this machine's index, 0 .. nnodes-1 (node 0 hosts rank 0)")
    master_addr: str | None = Field(None, min_length=1,
                                    description="node 0's host name or IP, the same on every node (nnodes > 1)")

    @property
    def processes(self) -> int:
        """Processes on this machine."""
        return len(self.gpus.split(",")) if self.gpus else self.nproc

    @model_validator(mode="after")
    def _node_rank_is_a_node(self) -> "DistributedConfig":
        if self.nnodes > 1 and self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank = {self.node_rank} is not a node of nnodes = {self.nnodes} "
                             f"(node ranks run from 0 to {self.nnodes - 1})")
        return self


class PrismConfig(_Table):
    """The whole ``prism.toml``."""

    project: ProjectConfig = Field(default_factory=ProjectConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)


