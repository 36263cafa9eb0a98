"""``AdapterSet``: the one handle a method has on the LoRA layers of its model.

It selects layers, adds and removes slots (one LoRA each), chooses what trains
and how slots are mixed, and holds the adapter state dict. ``inject_adapters``
(``prism.adapters.inject``) builds it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence, Union

import torch
from torch import Tensor, nn

from prism.adapters.layers import DeltaFn, LoRALinear, Mix, SlotInit, SlotSpec
from prism.adapters.routing import RouterFactory
from prism.adapters.slot_args import resolve_weights, slot_list
from prism.errors import CheckpointError

#: Which layers an operation applies to: a regex (re.fullmatch on the path), a
#: predicate on the path, an explicit collection of paths, or None for all layers.
LayerFilter = Union[str, "re.Pattern[str]", Callable[[str], bool], Iterable[str], None]


class LoadReport(NamedTuple):
    missing: list[str]
    unexpected: list[str]


def sample_paths(paths: list[str], limit: int = 8) -> list[str]:
    if len(paths) <= limit:
        return paths
    step = len(paths) / limit
    return [paths[int(i * step)] for i in range(limit)]


class AdapterSet:
    """The handle methods use: every ``LoRALinear`` of one model, addressed by path.

    The layers hold all state (slots, routers, mix); an AdapterSet is a view and can be
    rebuilt at any time with ``AdapterSet(model)``.
    """

    def __init__(self, model: nn.Module, *, targets: Sequence[str] = ()) -> None:
        self.model = model
        self.targets = list(targets)
        self.layers: dict[str, LoRALinear] = {
            path: module for path, module in model.named_modules() if isinstance(module, LoRALinear)
        }
        for path, layer in self.layers.items():
            layer.path = path

    def __repr__(self) -> str:
        return f"AdapterSet({len(self.layers)} layers, slots={self.slots})"

    # -- selection -------------------------------------------------------------------------
    def select(self, layers: LayerFilter = None) -> dict[str, LoRALinear]:
        """The layers a :data:`LayerFilter` picks; an empty selection is an error, never a no-op."""
        if layers is None:
            chosen = dict(self.layers)
        elif isinstance(layers, (str, re.Pattern)):
            try:
                pattern = re.compile(layers)
            except re.error as exc:
                raise ValueError(f"layer filter {layers!r} is not a valid regex: {exc}") from exc
            chosen = {p: m for p, m in self.layers.items() if pattern.fullmatch(p)}
        elif callable(layers):
            chosen = {p: m for p, m in self.layers.items() if layers(p)}
        else:
            wanted = list(layers)
            unknown = [p for p in wanted if p not in self.layers]
            if unknown:
                raise ValueError(f"not adapter layers: {unknown[:5]}")
            chosen = {p: self.layers[p] for p in wanted}
        if not chosen:
            raise ValueError(
                f"layer filter {layers!r} selects none of the {len(self.layers)} adapter layers "
                f"(e.g. {sample_paths(list(self.layers), 3)})"
            )
        return chosen

    # -- slots -------------------------------------------------------------------------------
    @property
    def slots(self) -> list[str]:
        """Every slot name, in creation order."""
        seen: dict[str, None] = {}
        for layer in self.layers.values():
            seen.update(dict.fromkeys(layer.slots))
        return list(seen)

    def spec(self, slot: str) -> SlotSpec:
        """The slot's hyper-parameters (from the first layer holding it)."""
        self._check_slots([slot])
        return next(layer.specs[slot] for layer in self.layers.values() if slot in layer.specs)

    def slot_layers(self, slot: str) -> list[str]:
        return [path for path, layer in self.layers.items() if slot in layer.specs]

    def add_slot(
        self,
        name: str,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        *,
        use_rslora: bool = False,
        layers: LayerFilter = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        exist_ok: bool = False,
        init: SlotInit = "kaiming",
        scaling: float | None = None,
    ) -> None:
        """Add a zero-initialised slot to every selected layer (the model's output is unchanged).

        A is drawn layer by layer, in model order, from ``generator`` (or a generator seeded
        with ``seed``; else the global RNG), as ``init`` says ("kaiming", "gaussian" or a std).
        ``scaling`` sets the update's factor directly (e.g. α / r_total for one expert of a
        split rank); ``alpha`` is then ignored and recorded as the equivalent ``scaling · r``.
        ``dtype`` defaults to float32, as peft keeps adapter weights in float32 over a
        half-precision base.
        """
        if scaling is not None:
            if scaling <= 0:
                raise ValueError(f"slot {name!r}: scaling must be > 0, got {scaling!r}")
            alpha = float(scaling) * (math.sqrt(int(r)) if use_rslora else int(r))
        spec = SlotSpec(int(r), float(alpha), float(dropout), bool(use_rslora))
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        for layer in self.select(layers).values():
            if name in layer.specs:
                if exist_ok and layer.specs[name] == spec:
                    continue
                raise ValueError(f"{layer.path}: slot {name!r} already exists ({layer.specs[name]})")
            layer.add_slot(name, spec, generator=generator, dtype=dtype, init=init)

    def remove_slot(self, name: str) -> None:
        self._check_slots([name])
        for layer in self.layers.values():
            if name in layer.specs:
                layer.remove_slot(name)

    # -- what trains ---------------------------------------------------------------------------
    def freeze_base(self) -> None:
        """Freeze every model parameter that is not an adapter slot or router."""
        adapter = {id(p) for p in self.parameters(routers=True)}
        for param in self.model.parameters():
            if id(param) not in adapter:
                param.requires_grad_(False)

    def set_trainable(
        self, slots: Iterable[str], *, routers: bool | Iterable[str] = False, freeze_rest: bool = True
    ) -> None:
        """Only ``slots`` (and the routers asked for) train; other slots are frozen.

        With ``freeze_rest`` the rest of the model is frozen too; a method that also trains
        e.g. the projector unfreezes it afterwards.
        """
        slots = slot_list(slots)
        self._check_slots(slots)
        wanted = set(slots)
        routers = routers if isinstance(routers, bool) else set(routers)
        for layer in self.layers.values():
            for name in layer.slots:
                layer.lora_A[name].weight.requires_grad_(name in wanted)
                layer.lora_B[name].weight.requires_grad_(name in wanted)
            for name, router in layer.routers.items():
                router.requires_grad_(_wanted(routers, name))
        if freeze_rest:
            self.freeze_base()

    def num_trainable(self) -> int:
        """Number of trainable parameters in the whole model (what the optimizer will see)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    # -- mixing ----------------------------------------------------------------------------------
    def activate(
        self,
        slots: Sequence[str] | Mapping[str, float] | None = None,
        weights: Sequence[float] | Mapping[str, float] | None = None,
        *,
        layers: LayerFilter = None,
    ) -> None:
        """Set the active slots and their fixed weights (default 1.0 each).

        ``slots`` None: every slot of each layer, summed; ``[]``: base model only. A mapping
        gives slots and weights at once. Clears per-sample weights (set them per batch);
        keeps routers and delta functions.
        """
        names, fixed = resolve_weights(slots, weights)
        if names is not None:
            self._check_slots(names)
        for layer in self.select(layers).values():
            layer.mix.slots = None if names is None else tuple(names)
            layer.mix.fixed = fixed
            layer.mix.sample = None

    def set_sample_weights(self, weights: Tensor | None, *, layers: LayerFilter = None) -> None:
        """Per-sample weights ``[batch, n_active]`` (columns in active-slot order); None clears."""
        chosen = self.select(layers)
        if weights is not None:
            if weights.ndim != 2:
                raise ValueError(f"per-sample weights must be [batch, n_slots], got shape {tuple(weights.shape)}")
            for layer in chosen.values():
                if weights.shape[1] != len(layer.active_slots()):
                    raise ValueError(
                        f"{layer.path}: per-sample weights have {weights.shape[1]} columns but "
                        f"{len(layer.active_slots())} slots are active ({layer.active_slots()})"
                    )
        for layer in chosen.values():
            layer.mix.sample = weights

    def add_router(self, name: str, factory: RouterFactory, *, layers: LayerFilter = None) -> None:
        """Register ``factory(layer)`` as ``layer.routers[name]`` where it is missing (not used in the mix)."""
        if not name or "." in name:
            raise ValueError(f"invalid router name {name!r}")
        for layer in self.select(layers).values():
            if name not in layer.routers:
                layer.routers[name] = factory(layer).train(layer.training)

    def set_router(self, factory: RouterFactory | None, *, layers: LayerFilter = None, name: str = "router") -> None:
        """Route per token (or per sample) with ``layer.routers[name]``, created by ``factory`` if missing.

        The router gets the layer input and returns ``[batch, seq, n_active]`` or ``[batch, n_active]``.
        ``factory`` None detaches the router from the mix (its module and weights stay).
        """
        chosen = self.select(layers)
        if factory is not None:
            self.add_router(name, factory, layers=list(chosen))
        for layer in chosen.values():
            if factory is None:
                layer.mix.router = None
            else:
                layer.mix.router = name

    def set_delta_fn(self, fn: DeltaFn | None, *, layers: LayerFilter = None) -> None:
        """Replace the weighted sum by ``fn(layer, x) -> delta`` (None restores it).

        ``fn`` builds on ``layer.slot_delta(slot, x)``, ``layer.routers`` and ``layer.mix``.
        """
        for layer in self.select(layers).values():
            layer.mix.delta_fn = fn

    def clear_mix(self, *, layers: LayerFilter = None) -> None:
        """Back to the default: every slot summed with weight 1, no routing (routers stay registered)."""
        for layer in self.select(layers).values():
            layer.mix = Mix()

    # -- parameters and state ----------------------------------------------------------------------
    def named_parameters(
        self, slots: Iterable[str] | None = None, *, routers: bool | Iterable[str] = False
    ) -> dict[str, nn.Parameter]:
        """Adapter parameters by their model path (``<path>.lora_A.<slot>.weight`` ...)."""
        live = self._live(slots, routers, keep_buffers=False)
        return {key: value for key, value in live.items() if isinstance(value, nn.Parameter)}

    def parameters(
        self, slots: Iterable[str] | None = None, *, routers: bool | Iterable[str] = False
    ) -> list[nn.Parameter]:
        return list(self.named_parameters(slots, routers=routers).values())

    def state_dict(
        self, slots: Iterable[str] | None = None, *, routers: bool | Iterable[str] = True
    ) -> dict[str, Tensor]:
        """Copies of the adapter tensors, keyed by model path (peft's in-memory names)."""
        return {key: value.detach().clone() for key, value in self._live(slots, routers).items()}

    def load_state_dict(
        self,
        state: Mapping[str, Tensor],
        *,
        strict: bool = True,
        slots: Iterable[str] | None = None,
        routers: bool | Iterable[str] = True,
    ) -> LoadReport:
        """Copy ``state`` into the adapters. Expected keys are those ``state_dict(slots, routers=...)``
        returns; nothing is copied unless every shape matches (and, if strict, every key)."""
        live = self._live(slots, routers)
        for key, value in state.items():
            target = live.get(key)
            if target is not None and tuple(target.shape) != tuple(value.shape):
                raise CheckpointError(
                    f"adapter tensor {key!r} has shape {tuple(value.shape)} in the checkpoint but "
                    f"{tuple(target.shape)} in the model",
                    hint="the slot was created with a different rank (r) or on a different layer size",
                )
        report = LoadReport(sorted(set(live) - set(state)), sorted(set(state) - set(live)))
        if strict and (report.missing or report.unexpected):
            parts = []
            if report.unexpected:
                parts.append(f"{len(report.unexpected)} unexpected key(s), e.g. {report.unexpected[:3]}")
            if report.missing:
                parts.append(f"{len(report.missing)} missing key(s), e.g. {report.missing[:3]}")
            raise CheckpointError(
                "adapter weights do not match the model: " + "; ".join(parts),
                hint="create the same slots and routers (same target modules) before loading",
            )
        with torch.no_grad():
            for key, value in state.items():
                if key in live:
                    live[key].copy_(value)
        return report

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts about slots, routers and mixes (for ``prism_state.json``)."""
        slots: dict[str, Any] = {}
        for name in self.slots:
            holders = {p: layer.specs[name] for p, layer in self.layers.items() if name in layer.specs}
            rank = Counter(s.r for s in holders.values()).most_common(1)[0][0]
            alpha = Counter(s.alpha for s in holders.values()).most_common(1)[0][0]
            info = {**next(iter(holders.values())).to_dict(), "r": rank, "alpha": alpha, "layers": len(holders)}
            odd_ranks = {p: s.r for p, s in holders.items() if s.r != rank}
            odd_alphas = {p: s.alpha for p, s in holders.items() if s.alpha != alpha}
            if odd_ranks:
                info["rank_pattern"] = odd_ranks
            if odd_alphas:
                info["alpha_pattern"] = odd_alphas
            slots[name] = info
        routers: dict[str, Any] = {}
        for layer in self.layers.values():
            for name, router in layer.routers.items():
                entry = routers.setdefault(name, {"type": _qualname(router), "layers": 0})
                entry["layers"] += 1
        mixes: dict[str, dict[str, Any]] = {}
        for path, layer in self.layers.items():
            description = layer.mix.describe()
            key = repr(sorted(description.items()))
            mixes.setdefault(key, {**description, "layers": []})["layers"].append(path)
        return {"slots": slots, "routers": routers, "mix": list(mixes.values())}

    def unwrap(self) -> None:
        """Put the original linear layers back (all slots and routers are dropped), e.g. to
        ``save_pretrained`` a clean base model."""
        for path, layer in self.layers.items():
            parent_path, _, child = path.rpartition(".")
            setattr(self.model.get_submodule(parent_path), child, layer.base_layer)
        self.layers = {}

    # -- internals -------------------------------------------------------------------------------
    def _check_slots(self, slots: Iterable[str]) -> None:
        known = set(self.slots)
        unknown = [s for s in slots if s not in known]
        if unknown:
            raise ValueError(f"unknown adapter slot(s) {unknown}; existing slots: {sorted(known)}")

    def _live(
        self, slots: Iterable[str] | None, routers: bool | Iterable[str], *, keep_buffers: bool = True
    ) -> dict[str, Tensor]:
        names = None if slots is None else slot_list(slots)
        if names is not None:
            self._check_slots(names)
        router_names = routers if isinstance(routers, bool) else set(routers)
        live: dict[str, Tensor] = {}
        for path, layer in self.layers.items():
            for key, param in layer.named_slot_parameters(names):
                live[f"{path}.{key}"] = param
            for name, router in layer.routers.items():
                if not _wanted(router_names, name):
                    continue
                tensors = router.state_dict(keep_vars=True) if keep_buffers else dict(router.named_parameters())
                for key, tensor in tensors.items():
                    live[f"{path}.routers.{name}.{key}"] = tensor
        return live


def _wanted(selection: bool | Iterable[str], name: str) -> bool:
    return selection if isinstance(selection, bool) else name in set(selection)


def _qualname(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
