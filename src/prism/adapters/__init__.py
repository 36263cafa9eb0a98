"""prism's own small LoRA-family layer library, with PEFT's file format.

Why not peft's tuners: peft's tuner registry is closed to new types
(``register_peft_method`` only accepts existing ``PeftType`` members) and its variant
hooks (``LoraVariant``, ``_register_custom_module``) are private, which is why PRISM and
MCITlib vendor a fork of peft 0.4. Continual-learning methods need more than one LoRA per
layer (a slot per task or per expert), mixed by weights a method controls: fixed, per
sample (HiDe-LLaVA's top layer, DisCo) or per token through a router (MoELoRA). So prism
wraps target linear layers itself (:class:`LoRALinear`, plain or bitsandbytes base) and
gives methods one handle (:class:`AdapterSet`).

On disk it is still peft: parameter names are peft's in-memory names and
:func:`save_adapters` writes ``adapter_model.safetensors`` + ``adapter_config.json`` in
PEFT's key layout, so a plain single-slot LoRA checkpoint loads with stock
``peft.PeftModel.from_pretrained`` and gives identical outputs (tested), and a LoRA that
peft saved loads into prism with :func:`load_adapters`.

Typical use by a method::

    adapters = inject_adapters(model, TARGET_PRESETS["attn"])
    adapters.add_slot("task0", r=8, alpha=16, dropout=0.05, seed=0)
    adapters.set_trainable(["task0"])        # everything else frozen
    adapters.activate(["task0"])             # only this slot in the forward
"""

from prism.adapters.adapter_set import AdapterSet, LayerFilter, LoadReport
from prism.adapters.inject import inject_adapters
from prism.adapters.io import (
    load_adapters,
    read_adapter_config,
    read_adapter_meta,
    save_adapters,
)
from prism.adapters.layers import DeltaFn, LoRALinear, Mix, SlotSpec
from prism.adapters.routing import RouterFactory, TokenRouter, token_router

__all__ = [
    "AdapterSet",
    "DeltaFn",
    "LayerFilter",
    "LoRALinear",
    "LoadReport",
    "Mix",
    "RouterFactory",
    "SlotSpec",
    "TokenRouter",
    "inject_adapters",
    "load_adapters",
    "read_adapter_config",
    "read_adapter_meta",
    "save_adapters",
    "token_router",
]
