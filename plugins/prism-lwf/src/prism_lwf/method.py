"""lwf: Learning without Forgetting (Li & Hoiem, ECCV 2016) on one LoRA.

The model as it was at the end of the previous task is the teacher: while the
student learns the current task, its answer-token distributions are pulled
toward the teacher's on the *current* task's inputs, so no old data is kept.

With LoRA the teacher is cheap: the base model is frozen and shared, so the
teacher is a second, frozen adapter slot holding a copy of the student's
weights taken in ``end_task``. The teacher's logits come from a no-grad forward
with only that slot active; the student's forward is the engine's own.

Loss = CE + λ · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the
supervised (answer) positions — Li & Hoiem's distillation term (their cross-entropy
with the teacher's soft targets differs from this KL by the teacher's entropy, a
constant). ``t_squared = true`` multiplies it by T², Hinton et al.'s factor that keeps
the gradient's scale independent of T.

Nothing here imports torch at module level: ``prism methods show lwf`` and
shell completion load this class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from prism.methods.base import LoRAParams, Method, TaskContext

if TYPE_CHECKING:
    import torch

    from prism.benchmarks.data import Batch

STUDENT = "default"  # peft's adapter name: the saved checkpoint is a stock peft LoRA
TEACHER = "lwf_teacher"
STATE_PREFIX = "teacher."


class LwFParams(LoRAParams):
    """Li & Hoiem use T = 2 and λ = 1 (the distillation and new-task losses weighted
    equally); the LoRA settings default to MCITlib's sequential-LoRA baseline."""

    r: int = Field(16, ge=1, description="LoRA rank (MCITlib: 16)")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; update scaled by alpha/r")
    target_modules: str = Field(
        "attn", description="preset (attn, attn_and_ffn, ffn, all_linear) or regex over module paths"
    )
    lambda_distill: float = Field(1.0, ge=0, description="weight λ of the distillation term (0: ft_lora)")
    temperature: float = Field(2.0, gt=0, description="softmax temperature T of teacher and student")
    t_squared: bool = Field(
        False, description="multiply the distillation term by T² (Hinton et al.); Li & Hoiem do not"
    )


class LwF(Method):
    """One LoRA trained on every task, distilled from its own previous-task copy."""

    id = "lwf"
    summary = "Learning without Forgetting: distil the previous task's model on the current inputs"
    Params = LwFParams

    def __init__(self, params: LwFParams, run: Any):
        super().__init__(params, run)
        self.teacher_task: str | None = None  # the task the teacher finished learning

    # -- set-up and tasks ----------------------------------------------------------------
    def attach(self, backbone: Any) -> None:
        from prism.adapters import inject_adapters

        super().attach(backbone)
        p = self.params
        self.adapters = inject_adapters(backbone.model, backbone.target_regex(p.target_modules))
        self.adapters.add_slot(STUDENT, r=p.r, alpha=p.alpha, dropout=p.dropout, seed=self.run.seed)
        self._student_only()

    def _student_only(self) -> None:
        assert self.adapters is not None
        self.adapters.set_trainable([STUDENT])
        self.adapters.activate([STUDENT])

    def begin_task(self, task: TaskContext) -> None:
        self._student_only()

    def end_task(self, task: TaskContext, fit: Any) -> None:
        """The model that has just learned ``task`` teaches every later task."""
        self.snapshot_teacher(task.name)

    def prepare_inference(self, learned: TaskContext) -> None:
        self._student_only()

    def inference_mix(self) -> dict[str, float]:
        """The student answers alone; the teacher slot only serves the distillation loss."""
        return {STUDENT: 1.0}

    @property
    def has_teacher(self) -> bool:
        return self.adapters is not None and TEACHER in self.adapters.slots

    def snapshot_teacher(self, task_name: str) -> None:
        """Copy the student's weights into the frozen teacher slot."""
        assert self.adapters is not None
        self._ensure_teacher_slot()
        student = self.adapters.state_dict([STUDENT], routers=False)
        marker = f".{STUDENT}."
        renamed = {key.replace(marker, f".{TEACHER}."): value for key, value in student.items()}
        self.adapters.load_state_dict(renamed, slots=[TEACHER], routers=False)
        self.teacher_task = task_name
        self._student_only()

    def _ensure_teacher_slot(self) -> None:
        assert self.adapters is not None
        if TEACHER not in self.adapters.slots:
            spec = self.adapters.spec(STUDENT)
            # No dropout: the teacher's targets must not be noisy.
            self.adapters.add_slot(TEACHER, r=spec.r, alpha=spec.alpha, dropout=0.0,
                                   use_rslora=spec.use_rslora)

    # -- the loss ------------------------------------------------------------------------
    def loss(self, task: TaskContext, batch: "Batch", outputs: Any) -> "torch.Tensor":
        p = self.params
        if not self.has_teacher or p.lambda_distill == 0 or batch.labels is None:
            return outputs.loss
        teacher = self.teacher_logits(batch)
        term = distillation_loss(outputs.logits, teacher, batch.labels, p.temperature, t_squared=p.t_squared)
        return outputs.loss + p.lambda_distill * term

    def teacher_logits(self, batch: "Batch") -> "torch.Tensor":
        """Logits of the frozen teacher on ``batch`` (no grad, eval mode, student restored after)."""
        import torch

        assert self.adapters is not None and self.backbone is not None
        model = self.backbone.model
        was_training = model.training
        inputs = {k: v for k, v in batch.model_inputs().items() if k != "labels"}
        self.adapters.activate([TEACHER])
        try:
            model.eval()
            with torch.no_grad():
                return model(**inputs).logits
        finally:
            model.train(was_training)
            self.adapters.activate([STUDENT])

    # -- state ---------------------------------------------------------------------------
    def adapter_slots_for_checkpoint(self) -> list[str] | None:
        return [STUDENT]  # the teacher goes to prism_state.safetensors, keeping the LoRA stock peft

    def state_dict(self) -> dict[str, "torch.Tensor"]:
        if not self.has_teacher:
            return {}
        assert self.adapters is not None
        return {STATE_PREFIX + k: v for k, v in self.adapters.state_dict([TEACHER], routers=False).items()}

    def state_metadata(self) -> dict[str, Any]:
        return {"teacher_task": self.teacher_task}

    def load_state(self, tensors: dict[str, "torch.Tensor"], metadata: dict[str, Any]) -> None:
        teacher = {k[len(STATE_PREFIX):]: v for k, v in tensors.items() if k.startswith(STATE_PREFIX)}
        if not teacher:
            return
        self._ensure_teacher_slot()
        assert self.adapters is not None
        self.adapters.load_state_dict(teacher, slots=[TEACHER], routers=False)
        self.teacher_task = metadata.get("teacher_task")
        self._student_only()


def distillation_loss(student_logits: "torch.Tensor", teacher_logits: "torch.Tensor",
                      labels: "torch.Tensor", temperature: float, *, t_squared: bool = False) -> "torch.Tensor":
    """KL(softmax(teacher/T) ‖ softmax(student/T)), mean over supervised positions (× T² if asked).

    Logits at position i predict token i+1, so the answer tokens ``labels[:, 1:]``
    select ``logits[:, :-1]`` (the shift transformers' causal-LM loss uses).
    The optional T² factor keeps the gradient's scale independent of T (Hinton et al.).
    """
    import torch.nn.functional as F

    from prism.benchmarks.data import IGNORE_INDEX

    mask = labels[:, 1:] != IGNORE_INDEX
    if not bool(mask.any()):
        return student_logits.sum() * 0.0
    student = student_logits[:, :-1][mask].float() / temperature
    teacher = teacher_logits[:, :-1][mask].float().detach() / temperature
    kl = F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1),
                  log_target=True, reduction="batchmean")
    return kl * temperature**2 if t_squared else kl
