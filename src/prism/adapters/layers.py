"""``LoRALinear``: a frozen linear layer plus any number of named LoRA slots.

A *slot* is one LoRA pair (A, B) with its own rank, alpha and dropout: a task's
adapter (O-LoRA, HiDe-LLaVA, DisCo) or an expert (MoELoRA). The layer adds

    Σ_i  w_i · scaling_i · B_i A_i dropout_i(x)

to the base output, where the weight of slot i is the product of the factors a
method has set on the layer's :class:`Mix` (each factor is 1 when unset)::

    w_i[b, s] = fixed[i] · sample[b, i] · router(x)[b, s, i]

Every slot's output is computed on its own and multiplied by its own weight, so
a gated mixture is Σ g_i B_i A_i x with no g_i g_j cross terms.

Attribute and parameter names are peft's in-memory names (``base_layer.weight``,
``lora_A.<slot>.weight``, ``lora_B.<slot>.weight``, ``lora_dropout``), which is
what makes a single slot save and load as a stock peft LoRA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

#: A method's own combination rule: ``fn(layer, x) -> delta`` (added to the base output).
DeltaFn = Callable[["LoRALinear", Tensor], "Tensor | None"]


@dataclass(frozen=True)
class SlotSpec:
    """Hyper-parameters of one slot in one layer."""

    r: int
    alpha: float
    dropout: float = 0.0
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if int(self.r) != self.r or self.r < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.r!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def scaling(self) -> float:
        """alpha/r (alpha/sqrt(r) with rsLoRA), as peft computes it."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_dict(self) -> dict[str, Any]:
        return {"r": int(self.r), "alpha": float(self.alpha), "dropout": float(self.dropout),
                "use_rslora": bool(self.use_rslora)}


@dataclass
class Mix:
    """How a layer combines its slots; every factor is optional.

    ``slots``: the active slots, in column order of ``sample`` and of the router
    output (None: every slot of the layer, in creation order). A slot named here
    that this layer lacks contributes nothing but keeps its column.
    ``fixed``: one constant per active slot. ``sample``: ``[batch, n_active]``.
    ``router``: the name of a module in ``layer.routers`` mapping the layer input
    to ``[batch, seq, n_active]`` (per token) or ``[batch, n_active]`` (per sample).
    ``delta_fn``: replaces the weighted sum altogether.
    """

    slots: tuple[str, ...] | None = None
    fixed: tuple[float, ...] | None = None
    sample: Tensor | None = None
    router: str | None = None
    delta_fn: DeltaFn | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable summary (per-batch tensors and callables are named, not stored)."""
        return {
            "slots": None if self.slots is None else list(self.slots),
            "weights": None if self.fixed is None else list(self.fixed),
            "per_sample": self.sample is not None,
            "router": self.router,
            "custom": self.delta_fn is not None,
        }


#: How a slot's A is drawn: "kaiming" (LoRA's and peft's default, kaiming-uniform with a=√5),
#: "gaussian" (peft's init_lora_weights="gaussian": N(0, 1/r)) or a float: N(0, std) with that
#: std (CoIN's MoELoRA draws A from N(0, 0.01)).
SlotInit = str | float


def init_lora_a(weight: Tensor, generator: torch.Generator | None, init: SlotInit = "kaiming") -> None:
    """Draw A as ``init`` says, on the CPU, so a seed gives the same values on any device."""
    values = torch.empty(weight.shape, dtype=torch.float32)
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        if init <= 0:
            raise ValueError(f"a slot's init std must be > 0, got {init!r}")
        nn.init.normal_(values, std=float(init), generator=generator)
    elif init == "kaiming":
        nn.init.kaiming_uniform_(values, a=math.sqrt(5), generator=generator)
    elif init == "gaussian":
        nn.init.normal_(values, std=1.0 / weight.shape[0], generator=generator)
    else:
        raise ValueError(f"unknown slot init {init!r}: use 'kaiming', 'gaussian' or a std (a number > 0)")
    with torch.no_grad():
        weight.copy_(values)


def _new_linear(in_features: int, out_features: int, device: Any, dtype: torch.dtype) -> nn.Linear:
    """A bias-free nn.Linear whose default init does not consume the global RNG."""
    layer = nn.Linear(in_features, out_features, bias=False, device="meta")
    layer.weight = nn.Parameter(torch.zeros(out_features, in_features, device=device, dtype=dtype))
    return layer


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for an empty module)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


class LoRALinear(nn.Module):
    """A frozen ``base_layer`` plus named LoRA slots, mixed as the current :class:`Mix` says.

    The base may be ``nn.Linear`` or a bitsandbytes ``Linear8bitLt``/``Linear4bit``:
    the wrapper only calls ``base_layer(x)`` and reads ``in_features``/``out_features``.
    """

    def __init__(self, base_layer: nn.Module, path: str = "") -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features = int(base_layer.in_features)
        self.out_features = int(base_layer.out_features)
        self.path = path  # module path in the model, for error messages
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.routers = nn.ModuleDict()
        self.specs: dict[str, SlotSpec] = {}
        self.scaling: dict[str, float] = {}
        self.mix = Mix()
        #: the router context of the current forward (prism.adapters.router_context), shared by every layer
        self.context: Any = None
        base_layer.requires_grad_(False)
        self.train(base_layer.training)

    # -- code that reads ``proj.weight`` / ``proj.bias`` keeps working ----------------
    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return getattr(self.base_layer, "bias", None)

    # -- slots -------------------------------------------------------------------------
    @property
    def slots(self) -> list[str]:
        return list(self.lora_A.keys())

    def add_slot(
        self,
        name: str,
        spec: SlotSpec,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: Any = None,
        init: SlotInit = "kaiming",
    ) -> None:
        """Add slot ``name``: A drawn from ``generator`` as ``init`` says, B zero (the output is unchanged)."""
        _check_slot_name(name)
        if name in self.lora_A:
            raise ValueError(f"{self.path or 'layer'}: slot {name!r} already exists")
        device = module_device(self.base_layer) if device is None else device
        dtype = torch.float32 if dtype is None else dtype
        lora_a = _new_linear(self.in_features, spec.r, device, dtype)
        init_lora_a(lora_a.weight, generator, init)
        self.lora_A[name] = lora_a
        self.lora_B[name] = _new_linear(spec.r, self.out_features, device, dtype)
        self.lora_dropout[name] = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        for store in (self.lora_A, self.lora_B, self.lora_dropout):
            store[name].train(self.training)  # a slot added to an eval-mode model stays in eval
        self.specs[name] = spec
        self.scaling[name] = spec.scaling

    def remove_slot(self, name: str) -> None:
        for store in (self.lora_A, self.lora_B, self.lora_dropout):
            del store[name]
        del self.specs[name], self.scaling[name]

    def slot_delta(self, name: str, x: Tensor) -> Tensor:
        """scaling · B(A(dropout(x))) for one slot, computed in the slot's dtype."""
        lora_a = self.lora_A[name]
        if x.dtype != lora_a.weight.dtype:
            x = x.to(lora_a.weight.dtype)
        return self.lora_B[name](lora_a(self.lora_dropout[name](x))) * self.scaling[name]

    def delta_weight(self, name: str) -> Tensor:
        """The dense update ΔW = scaling · B @ A, shape ``[out_features, in_features]``."""
        return self.scaling[name] * (self.lora_B[name].weight @ self.lora_A[name].weight)

    # -- mixing ---------------------------------------------------------------------------
    def active_slots(self) -> list[str]:
        """Column order of the mix: the mix's slots, or every slot of the layer."""
        return list(self.mix.slots) if self.mix.slots is not None else self.slots

    def router_weights(self, x: Tensor) -> Tensor | None:
        """The current router's output on ``x`` (None without a router)."""
        if self.mix.router is None:
            return None
        router = self.routers[self.mix.router]
        dtype = next((p.dtype for p in router.parameters()), x.dtype)
        x_in = x if x.dtype == dtype else x.to(dtype)
        if getattr(router, "takes_context", False):
            from prism.adapters.router_context import RouterContext

            gates = router(x_in, self.context if self.context is not None else RouterContext())
        else:
            gates = router(x_in)
        n = len(self.active_slots())
        per_token = gates.shape == x.shape[:-1] + (n,)
        per_sample = gates.ndim == 2 and gates.shape[1] == n and gates.shape[0] in (1, x.shape[0])
        if not (per_token or per_sample):
            raise ValueError(
                f"{self.path}: router {self.mix.router!r} returned shape {tuple(gates.shape)}; expected "
                f"{tuple(x.shape[:-1]) + (n,)} (per token) or {(x.shape[0], n)} (per sample; a batch of "
                f"1 broadcasts) for {n} active slots"
            )
        return gates

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        result = self.base_layer(x, *args, **kwargs)
        mix = self.mix
        if mix.delta_fn is not None:
            delta = mix.delta_fn(self, x)
            return result if delta is None else (result + delta).to(result.dtype)
        active = self.active_slots()
        if not active:
            return result
        out_dtype = result.dtype
        plain = mix.fixed is None and mix.sample is None and mix.router is None
        if plain and len(active) == 1 and active[0] in self.lora_A:
            # The common case (one task's slot): exactly peft's arithmetic, nothing stacked.
            return (result + self.slot_delta(active[0], x)).to(out_dtype)
        sample = self._checked_sample(x, len(active))
        gates = self.router_weights(x)
        if gates is not None and sample is None and mix.fixed is None and self._fusable(active):
            return (result + self._gated_experts(active, x, gates)).to(out_dtype)
        for column, name in enumerate(active):
            constant = 1.0 if mix.fixed is None else mix.fixed[column]
            if name not in self.lora_A or constant == 0.0:
                continue
            delta = self.slot_delta(name, x)
            if constant != 1.0:
                delta = delta * constant
            if sample is not None:
                delta = delta * _per_sample(sample[:, column], delta)
            if gates is not None:
                delta = delta * _gate_column(gates, column, delta)
            result = result + delta
        return result.to(out_dtype)

    def _fusable(self, active: list[str]) -> bool:
        """Whether routed slots can run as one pair of matmuls: all present, one scaling, one dtype."""
        if len(active) < 2 or any(name not in self.lora_A for name in active):
            return False
        first = active[0]
        return all(self.scaling[n] == self.scaling[first] and self.specs[n].dropout == self.specs[first].dropout
                   and self.lora_A[n].weight.dtype == self.lora_A[first].weight.dtype for n in active)

    def _gated_experts(self, active: list[str], x: Tensor, gates: Tensor) -> Tensor:
        """``scaling · Σ_i g_i B_i A_i x`` as ``B_cat (g ⊙ A_cat x)``: two matmuls instead of 2E.

        Each expert's gate multiplies its own rank block, so the result is the per-slot sum
        exactly (no cross terms). The experts share one dropout mask on x, as CoIN's MoELoRA
        applies its dropout once before the experts.
        """
        first = active[0]
        lora_a = torch.cat([self.lora_A[n].weight for n in active])
        lora_b = torch.cat([self.lora_B[n].weight for n in active], dim=1)
        x_in = self.lora_dropout[first](x if x.dtype == lora_a.dtype else x.to(lora_a.dtype))
        ranks = [self.specs[n].r for n in active]
        if len(set(ranks)) == 1:  # the usual equal ranks: no repeats tensor to build (nor a host sync on a GPU)
            expanded = gates.to(lora_a.dtype).repeat_interleave(ranks[0], dim=-1)
        else:
            expanded = gates.to(lora_a.dtype).repeat_interleave(torch.tensor(ranks, device=gates.device), dim=-1)
        if expanded.ndim == 2 and x.ndim == 3:  # per-sample gates: one row per sample
            expanded = expanded.unsqueeze(1)
        hidden = torch.nn.functional.linear(x_in, lora_a) * expanded
        return torch.nn.functional.linear(hidden, lora_b) * self.scaling[first]

    def _checked_sample(self, x: Tensor, n: int) -> Tensor | None:
        sample = self.mix.sample
        if sample is None:
            return None
        if sample.ndim != 2 or sample.shape[1] != n or sample.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"{self.path}: per-sample weights have shape {tuple(sample.shape)}, expected "
                f"[batch={x.shape[0]}, slots={n}] (active slots: {self.active_slots()}); "
                "with beam search or repeated samples, repeat the rows to the expanded batch"
            )
        return sample.to(x.device) if sample.device != x.device else sample

    def named_slot_parameters(self, slots: list[str] | None = None) -> Iterator[tuple[str, nn.Parameter]]:
        """``lora_A.<slot>.weight`` / ``lora_B.<slot>.weight`` of the given slots (all by default)."""
        for name in self.slots if slots is None else slots:
            if name in self.lora_A:
                yield f"lora_A.{name}.weight", self.lora_A[name].weight
                yield f"lora_B.{name}.weight", self.lora_B[name].weight

    def extra_repr(self) -> str:
        slots = ", ".join(f"{n}(r={s.r})" for n, s in self.specs.items())
        return f"in={self.in_features}, out={self.out_features}, slots=[{slots}]"


def _check_slot_name(name: str) -> None:
    if not isinstance(name, str) or not name or "." in name or name == "weight":
        raise ValueError(f"invalid slot name {name!r}: use a non-empty name without dots (e.g. 'task0')")


def _per_sample(column: Tensor, like: Tensor) -> Tensor:
    """Reshape a ``[batch]`` weight column to broadcast over ``like`` (``[batch, ..., out]``)."""
    return column.to(like.dtype).reshape((column.shape[0],) + (1,) * (like.ndim - 1))


def _gate_column(gates: Tensor, column: int, like: Tensor) -> Tensor:
    if gates.ndim == like.ndim:  # per token: [batch, seq, n]
        return gates[..., column : column + 1].to(like.dtype)
    return _per_sample(gates[:, column], like)  # per sample: [batch, n]
