"""smolora: separable mixture of LoRA (SMoLoRA, Wang et al., ICCV 2025).

SMoLoRA names a *dual* forgetting in continual visual instruction tuning: of visual understanding
and of instruction following. Each target linear holds two expert groups, LoRA slots of rank
r / E scaled by α / r (E = all experts; half per group), and routes them apart
(``prism.adapters.separable``):

- visual-understanding experts, one chosen per sample by a linear router on the mask-aware mean of
  the layer's input over the sample's prompt (padding and, in training, the answer tokens left out:
  with causal attention the training pool is then exactly the prefill's), chosen at the prefill
  and kept for every decode step of that sample;
- instruction-following experts, one chosen per sample by a linear router on the embedding of the
  sample's instruction;
- the two branch outputs fused per token by ``softmax(s_v(out_v), s_i(out_i))``, two learned
  ``Linear(out_features, 1)`` scores: ``Δ = w_v · out_v + w_i · out_i`` with ``w_v + w_i = 1``.

Every expert and the fusion scores train on every task (only the chosen experts get gradient). The
two routers keep their seeded initialisation by default (``router_training = "frozen"``), as the
release's routers do; with a learning ``router_training`` they learn on the first task and are
frozen from the second on (``train_routers``).

What is embedded as "the instruction": the paper routes on the task's instruction; at inference
the task is unknown, so prism embeds each sample's own instruction (the first human turn without
``<image>``: the question with its answer-format template), in training as at test time, so the
router is trained on what it sees at test. The encoder (``instruction_encoder``) is
sentence-transformers' all-MiniLM-L6-v2 when that package and model are on the machine, the
routing tower's CLIP text otherwise (PRISM's fallback); its identity is saved and checked on load.

Paper vs release, as far as prism could read them. The paper (arXiv 2411.13949) describes the VU
router on the input's average feature, the IF router on the task instruction's embedding, top-1
LoRA-block selection and an adaptive fusion; prism could not confirm from it how a top-1 choice
trains its router. The release (Minato-Zackie/SMoLoRA, ``peft/tuners/smolora.py``): the VU router
averages every position, padding included, and under the KV cache re-chooses from the one new
token; both gates are constant one-hot vectors (no router gradient) and are set frozen from the
second task on, so the routers never leave their initialisation; the IF embedding is the
all-MiniLM-L6-v2 mean-pooled embedding of a fixed per-task template, indexed by the task id given on
the command line, in training and at evaluation. The release does mean its routers to learn on
the first task only: it sets the gates' ``requires_grad`` for task 0 and clears it for later
tasks, but with constant gates they never move. prism pools mask-aware at prefill; its routers,
like the release's, stay at their seeded initialisation (``router_training = "frozen"``, the
default: the paper describes no router objective, and the release's routers get no gradient);
``"straight_through"`` (one-hot forward, softmax gradient) or ``"gate_value"`` train them through
the top-1 choice on the first task (``train_routers = "every_task"``: on every task). prism offers
the oracle task id only through ``[infer] task_oracle`` (the task's mean training-instruction
embedding then routes every sample; the run's cl_metrics.json says so and each prediction records
``instruction_source``).

Measured on the embedded benchmark with the builder-v1 tiny base (tasks 0-2, seed 42), whose
tasks each had to teach their answer format: a router that learns pulls the later tasks'
instructions onto the experts the first task trained (a linear router on embeddings that share a
common direction moves them all together), so tasks share more instruction experts than at
initialisation and forget more; the release's untrained routers hash tasks apart at random
(BWT: -94 with routers learning on the first task, -100 learning on every task, -77 with
``router_training = "frozen"``; ft_lora -100). On the v2 base (tasks 0-2, ft_lora's r 8), a router
trained on the first task sends every later instruction to the first task's experts (routing
accuracy 0 for tasks 2 and 3; BWT -11 with seed 42, -59 with seed 7, against ft_lora's -53 and -39),
while the seeded, untrained routers keep each task's instructions on its own experts (routing
accuracy 100 for every task) and forget less than ft_lora with both seeds (BWT -39 and -9): hence
the default.

Routing diagnostics: each prediction records ``metadata.experts`` (per adapted layer, the chosen
instruction and visual expert) and ``metadata.routing``: per learned task, the share of layers in
which the sample's instruction expert is the one that task's training instructions chose (the
task's *signature*, taken at the end of the task), so ``routing_accuracy`` is how often the
instruction router still sends a sample to the experts its own task trained.

State: experts, routers and fusion scores are in adapter_model.safetensors (``<layer>.lora_*`` and
``<layer>.routers.{visual,instruction,fusion}.*``); each task's mean instruction embedding in
prism_state.safetensors (``instruction_embedding.<task>``); signatures, counts and the encoder's
identity in prism_state.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from prism.adapters.separable import FUSION, INSTRUCTION, INSTRUCTION_ROUTER, POOL_MASK, VISUAL, GateMode
from prism.backbones.instruction_encoders import DEFAULT_SENTENCE_MODEL
from prism.methods.base import FitHandle, LoRAParams, Method, TaskContext
from prism.methods.forward import ForwardContext, ForwardPlan

ENCODER_KEY = "[method.smolora] instruction_encoder"


class SMoLoRAParams(LoRAParams):
    """Published (SMoLoRA scripts, LLaVA-1.5-7B): r 128, α 256, 8 experts (4 visual + 4 instruction), lr 1e-4,
    weight decay 0.01, every linear layer of the language model, A ~ N(0, 0.01). prism follows the paper where the
    release differs: mask-aware visual pooling at prefill (the release averages padding too and re-chooses from
    each decoded token), routers at their seeded initialisation as the release's (its gates are constant one-hot,
    so they never learn; the paper gives them no objective; router_training selects a learning mode), each
    sample's own instruction embedded (the release indexes a per-task template by the true task id; here only
    with [infer] task_oracle)."""

    r: int = Field(128, ge=1, description="total LoRA rank, split into num_experts experts of r // num_experts "
                   "(SMoLoRA scripts: --lora_r 128)")
    alpha: float = Field(256.0, gt=0, description="LoRA alpha; every expert is scaled by alpha/r, the total rank "
                         "(SMoLoRA scripts: --lora_alpha 256)")
    num_experts: int = Field(8, ge=2, description="experts per layer, half visual-understanding, half "
                             "instruction-following (SMoLoRA scripts: --expert_num 8)")
    init_a: float = Field(0.01, gt=0, description="std of the normal each expert's A is drawn from (release: 0.01)")
    router_training: GateMode = Field(
        "frozen", description="how the top-1 routers learn: 'frozen' (the release: constant one-hot gates, routers "
        "kept at their seeded initialisation), 'straight_through' (one-hot forward, softmax gradient) or "
        "'gate_value' (the chosen expert scaled by its probability); the learning modes train on the tasks "
        "train_routers names")
    train_routers: Literal["first_task", "every_task"] = Field(
        "first_task", description="when the two routers learn: 'first_task' (the release's intent: its gates are set "
        "frozen from the second task on) or 'every_task'; the fusion scores and experts learn on every task")
    instruction_encoder: Literal["auto", "sentence", "clip"] = Field(
        "auto", description="what embeds each sample's instruction: 'sentence' (sentence-transformers, as the "
        "release; pip install 'prism-mcit[sentence]'), 'clip' (the routing tower's CLIP text, PRISM's fallback) or "
        "'auto' (sentence when the package and model are on this machine, else clip); saved and checked on load")
    sentence_model: str = Field(DEFAULT_SENTENCE_MODEL, description="the sentence-transformers model (folder or hub "
                                "id) of instruction_encoder 'sentence'/'auto' (release: all-MiniLM-L6-v2, 384-d)")
    signature_batch_size: int = Field(32, ge=1, description="records per batch of the end-of-task pass that embeds "
                                      "the task's instructions (its mean embedding and routing signature)")

    @field_validator("num_experts")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"must be even (half visual, half instruction experts), got {value}")
        return value


@dataclass
class TaskInstruction:
    """What a learned task leaves for routing: its mean instruction embedding and its routing signature."""

    embedding: Tensor  # [dim], the mean over the task's training records
    count: int
    signature: list[int]  # per adapted layer: the instruction expert most of the task's records chose


def prompt_mask(attention_mask: Tensor, labels: Tensor | None) -> Tensor:
    """The positions a prefill would hold: attended and not a training target."""
    if labels is None:
        return attention_mask
    return attention_mask * (labels == -100).to(attention_mask.dtype)


class SMoLoRA(Method):
    """Visual-understanding and instruction-following LoRA experts per layer, each group routed top-1 by its
    own router (prompt mean hidden state, instruction embedding), fused per token by learned softmax scores."""

    id = "smolora"
    summary = "visual and instruction LoRA experts per layer, each chosen top-1 by its own router, fused per token"
    Params = SMoLoRAParams
    #: SMoLoRA's scripts: lr 1e-4, weight decay 0.01 (prism.toml's [train] wins)
    config_defaults = {"train": {"lr": 1e-4, "weight_decay": 0.01}}

    def __init__(self, params: SMoLoRAParams, run: Any):
        super().__init__(params, run)
        self.tasks: dict[str, TaskInstruction] = {}  # in the order learned
        self.learned: list[str] = []  # tasks answering at evaluation (prepare_inference)
        self.encoder: Any = None
        self.features: Any = None

    # -- set-up ----------------------------------------------------------------------------
    @property
    def visual_experts(self) -> list[str]:
        return [f"visual{i}" for i in range(self.params.num_experts // 2)]

    @property
    def instruction_experts(self) -> list[str]:
        return [f"instruction{i}" for i in range(self.params.num_experts // 2)]

    @property
    def expert_rank(self) -> int:
        return max(1, int(self.params.r) // int(self.params.num_experts))

    def attach(self, backbone) -> None:
        from prism.adapters import inject_adapters
        from prism.adapters.layers import module_device
        from prism.adapters.separable import BranchFusion, InstructionRouter, VisualRouter, separable_delta
        from prism.adapters.slot_ops import add_experts
        from prism.backbones.instruction_encoders import instruction_encoder
        from prism.backbones.routing_features import FeatureCache

        super().attach(backbone)
        params = self.params
        self.adapters = inject_adapters(backbone.model, backbone.target_regex(params.target_modules))
        add_experts(self.adapters, self.visual_experts + self.instruction_experts, total_rank=params.r,
                    alpha=params.alpha, dropout=params.dropout, init=params.init_a, seed=self.run.seed)
        self.encoder = instruction_encoder(params.instruction_encoder, backbone, sentence_model=params.sentence_model,
                                           key=ENCODER_KEY)
        self.features = FeatureCache(getattr(self.encoder, "tower", None), text_encoder=self.encoder)
        generator = torch.Generator().manual_seed(self.run.seed + 1)  # one stream for every layer's routers
        mode, half, dim = params.router_training, params.num_experts // 2, self.encoder.dim

        def device(layer):
            return module_device(layer.base_layer)

        self.adapters.add_router(VISUAL, lambda layer: VisualRouter(layer.in_features, half, mode=mode,
                                                                    generator=generator, device=device(layer)))
        self.adapters.add_router(INSTRUCTION_ROUTER, lambda layer: InstructionRouter(dim, half, mode=mode,
                                                                                     generator=generator,
                                                                                     device=device(layer)))
        self.adapters.add_router(FUSION, lambda layer: BranchFusion(layer.out_features, generator=generator,
                                                                    device=device(layer)))
        self.adapters.set_delta_fn(separable_delta(self.visual_experts, self.instruction_experts))
        self._train_everything()

    def _train_everything(self, task_index: int = 0) -> None:
        """Every expert and the fusion scores train; the routers too on the tasks ``train_routers`` names."""
        assert self.adapters is not None
        learn = self.params.router_training != "frozen" and (task_index == 0 or self.params.train_routers == "every_task")
        self.adapters.set_trainable(self.visual_experts + self.instruction_experts, routers=True if learn else [FUSION])

    def layer_routers(self, name: str) -> list[Any]:
        assert self.adapters is not None
        return [layer.routers[name] for layer in self.adapters.layers.values()]

    # -- training ----------------------------------------------------------------------------
    def begin_task(self, task: TaskContext) -> None:
        self._train_everything(task.index)

    def prepare_forward(self, batch, context: ForwardContext) -> ForwardPlan:
        embeddings, source = self.instruction_embeddings(batch, context)
        sample = {INSTRUCTION: embeddings}
        if context.phase != "eval":
            sample[POOL_MASK] = prompt_mask(batch.attention_mask, batch.labels)
            return ForwardPlan(sample=sample)
        choices = self.instruction_choices(embeddings)
        tasks = self.learned or list(self.tasks)
        routing = None
        if tasks:
            signatures = torch.tensor([self.tasks[t].signature for t in tasks])  # [T, L]
            routing = (choices[:, None, :] == signatures[None]).float().mean(-1)  # [B, T]
        visual_routers = self.layer_routers(VISUAL)
        for router in visual_routers:
            router.chosen = None
        beams, count = context.num_beams, len(batch)

        def describe() -> list[dict[str, Any]]:
            missing = torch.full((count * beams,), -1)
            visual = torch.stack([missing if r.chosen is None else r.chosen for r in visual_routers], 1)[::beams]
            return [{"experts": {"instruction": choices[i].tolist(), "visual": visual[i].tolist(),
                                 "instruction_source": source}} for i in range(count)]

        return ForwardPlan(sample=sample, routing=routing, routing_slots=tuple(tasks), describe_samples=describe)

    def instruction_embeddings(self, batch, context: ForwardContext) -> tuple[Tensor, str]:
        """``[B, dim]`` on the batch's device: each sample's instruction, or with the oracle its task's mean."""
        device = batch.input_ids.device
        task = context.oracle_task
        if task is None:
            return self.features.text_features(batch).to(device), "sample"
        if task not in self.tasks:
            raise ValueError(f"task {task!r} was not learned; the oracle can route only to {list(self.tasks)}")
        return self.tasks[task].embedding.to(device).expand(len(batch), -1), "task_oracle"

    @torch.no_grad()
    def instruction_choices(self, embeddings: Tensor) -> Tensor:
        """``[N, layers]``: the instruction expert each layer's router picks for each embedding."""
        routers = self.layer_routers(INSTRUCTION_ROUTER)
        return torch.stack([router.logits(embeddings).argmax(-1).cpu() for router in routers], dim=1)

    def end_task(self, task: TaskContext, fit: FitHandle | None) -> None:
        """Freeze everything, then embed the task's training instructions: their mean and routing signature."""
        assert self.adapters is not None
        self.adapters.set_trainable([], routers=False)
        if fit is None:
            return
        rows = [self.features.text_features(batch)
                for batch in fit.batches(batch_size=self.params.signature_batch_size)]
        if not rows:
            return
        embeddings = torch.cat(rows).float()
        signature = self.instruction_choices(embeddings).mode(dim=0).values
        self.tasks.pop(task.name, None)  # a re-run of the task replaces its entry, last in order
        self.tasks[task.name] = TaskInstruction(embeddings.mean(0), int(embeddings.shape[0]), signature.tolist())

    # -- inference -----------------------------------------------------------------------------
    def prepare_inference(self, learned: TaskContext) -> None:
        seen = {spec.name for spec in learned.seen}
        self.learned = [name for name in self.tasks if name in seen]

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        return {f"instruction_embedding.{name}": info.embedding.detach().clone() for name, info in self.tasks.items()}

    def state_metadata(self) -> dict[str, Any]:
        assert self.adapters is not None
        return {"experts": {"visual": self.visual_experts, "instruction": self.instruction_experts},
                "expert_rank": self.expert_rank, "router_training": self.params.router_training,
                "layers": len(self.adapters.layers), "encoder": self.encoder.identity(),
                "tasks": {name: {"count": info.count, "signature": info.signature} for name, info in self.tasks.items()}}

    def load_state(self, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
        """Restore the tasks' embeddings and signatures, refused unless experts, layers and encoder match."""
        from prism.errors import CheckpointError

        assert self.adapters is not None
        experts = {"visual": self.visual_experts, "instruction": self.instruction_experts}
        if metadata.get("experts", experts) != experts or metadata.get("expert_rank", self.expert_rank) != self.expert_rank:
            raise CheckpointError(f"the checkpoint holds experts {metadata.get('experts')} of rank "
                                  f"{metadata.get('expert_rank')}; these settings make {experts} of rank "
                                  f"{self.expert_rank}", hint="set [method.smolora] r and num_experts as in the run "
                                  "that saved it")
        layers = metadata.get("layers", len(self.adapters.layers))
        if layers != len(self.adapters.layers):
            raise CheckpointError(f"the checkpoint routes {layers} adapted layers, this model has "
                                  f"{len(self.adapters.layers)}", hint="set [method.smolora] target_modules as in "
                                  "the run that saved it")
        self._check_encoder(metadata.get("encoder"))
        self.tasks = {}
        for name, info in metadata.get("tasks", {}).items():
            key = f"instruction_embedding.{name}"
            if key not in tensors or tuple(tensors[key].shape) != (self.encoder.dim,):
                raise CheckpointError(f"the checkpoint has no {self.encoder.dim}-d instruction embedding for task "
                                      f"{name!r} ({key})", hint="the checkpoint is incomplete; train the task again")
            if len(info["signature"]) != len(self.adapters.layers):
                raise CheckpointError(f"task {name!r}'s routing signature covers {len(info['signature'])} layers, "
                                      f"not {len(self.adapters.layers)}")
            self.tasks[name] = TaskInstruction(tensors[key].float(), int(info["count"]), [int(e) for e in
                                                                                          info["signature"]])
        self.learned = list(self.tasks)
        self.adapters.set_trainable([], routers=False)

    def _check_encoder(self, saved: dict[str, Any] | None) -> None:
        from prism.errors import CheckpointError

        current = self.encoder.identity()
        if saved is None:
            raise CheckpointError("the checkpoint does not say which encoder made its instruction embeddings",
                                  hint="load it with the method that saved it")
        fields = ("kind", "dim", "fingerprint")
        if any(saved.get(f) != current[f] for f in fields):
            def show(identity):
                return f"{identity.get('kind')} {identity.get('source')!r} ({identity.get('dim')}-d, " \
                       f"fingerprint {identity.get('fingerprint')})"

            raise CheckpointError(f"the checkpoint's instruction embeddings and routers were made by {show(saved)}; "
                                  f"this run's instruction encoder is {show(current)}",
                                  hint=f"set {ENCODER_KEY} (and sentence_model, or [backbone] routing_tower for "
                                       "'clip') as in the run that saved it; embeddings of two encoders are not "
                                       "comparable")
