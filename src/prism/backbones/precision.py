"""Numeric precision of a loaded model, chosen separately for training and inference.

``[backbone] train_precision`` decides how ``prism train`` loads and trains the
model (and so how it evaluates after each task: with the model it trains);
``[infer] precision`` decides how ``prism infer`` loads it ("auto" = as trained).

- ``fp32``: fp32 weights, no autocast.
- ``bf16`` / ``fp16``: weights stored in that dtype (half the memory of fp32, as
  LLaVA's own scripts load them) and accelerate's autocast while training.
  Adapter weights are created in fp32 by ``prism.adapters``, so the optimizer
  still updates fp32 masters of what a LoRA method trains.
- ``8bit`` / ``4bit``: QLoRA-style. bitsandbytes quantises the language model's
  linear layers only; the vision tower, the projector and ``lm_head`` stay
  unquantised (``llm_int8_skip_modules``), in bf16 on a GPU (fp16 where bf16 is
  missing) and fp32 on a CPU, where bitsandbytes runs but only as a smoke test.

Every check names the TOML key or flag that chose the mode and what to install
or use instead, before a multi-GB model starts loading.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from prism.errors import ConfigError

TRAIN_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "8bit", "4bit")
INFER_PRECISIONS: tuple[str, ...] = ("auto", *TRAIN_PRECISIONS)
QUANTIZED: tuple[str, ...] = ("8bit", "4bit")
QUANT_INSTALL = "pip install 'prism-mcit[quant]' (bitsandbytes)"
NEEDS_CUDA = "needs a CUDA GPU"
NEEDS_BF16_GPU = "needs a GPU with bf16 support (Ampere or newer)"
#: Module paths bitsandbytes leaves alone in a quantised LLaVA (transformers matches them from the
#: start of a path, or as its suffix): only the language model's layers are quantised.
SKIP_MODULES: tuple[str, ...] = ("model.vision_tower", "model.multi_modal_projector", "lm_head")

DESCRIPTIONS: dict[str, str] = {
    "fp32": "fp32 weights",
    "bf16": "bf16 weights, bf16 autocast while training",
    "fp16": "fp16 weights, fp16 autocast and loss scaling while training",
    "8bit": "bitsandbytes int8 language model; vision tower and projector unquantised",
    "4bit": "bitsandbytes NF4 language model (QLoRA); vision tower and projector unquantised",
}


def _is_cuda(device: Any) -> bool:
    return "cuda" in str(device)


def _cuda_usable(device: Any) -> bool:
    if not _is_cuda(device):
        return False
    import torch

    return torch.cuda.is_available()


def bitsandbytes_installed() -> bool:
    """Whether bitsandbytes can be imported (checked without importing it: that is slow)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def available_precisions(device: Any) -> dict[str, str | None]:
    """Every mode → None when usable on ``device``, else why not."""
    cuda = _cuda_usable(device)
    result: dict[str, str | None] = {"fp32": None}
    if cuda:
        import torch

        result["bf16"] = None if torch.cuda.is_bf16_supported() else NEEDS_BF16_GPU
    else:
        result["bf16"] = None if not _is_cuda(device) else NEEDS_CUDA
    result["fp16"] = None if cuda else NEEDS_CUDA
    for mode in QUANTIZED:
        if _is_cuda(device) and not cuda:
            result[mode] = NEEDS_CUDA
        else:
            result[mode] = None if bitsandbytes_installed() else QUANT_INSTALL
    return result


def setting(key: str, mode: str) -> str:
    """How the user wrote it: ``--train-precision 8bit`` or ``[backbone] train_precision = "8bit"``."""
    return f"{key} {mode}" if key.startswith("-") else f'{key} = "{mode}"'


def check_precision(mode: str, device: Any, key: str) -> None:
    """Raise a ConfigError naming ``key`` (a TOML key or flag) when ``mode`` cannot run on ``device``."""
    if mode not in TRAIN_PRECISIONS:
        raise ConfigError(f"{setting(key, mode)}: expected one of {', '.join(TRAIN_PRECISIONS)}")
    available = available_precisions(device)
    reason = available[mode]
    if reason is None:
        return
    usable = ", ".join(f'"{m}"' for m, why in available.items() if why is None)
    if reason == QUANT_INSTALL:
        raise ConfigError(f"{setting(key, mode)} needs bitsandbytes, which is not installed",
                          hint=f"pip install 'prism-mcit[quant]', or use one of {usable}")
    raise ConfigError(f"{setting(key, mode)} {reason}", hint=f"use one of {usable} on this machine")


def resolve_infer_precision(infer_precision: str, train_precision: str) -> str:
    """``[infer] precision``, with "auto" meaning "as trained"."""
    return train_precision if infer_precision == "auto" else infer_precision


def weight_dtype(mode: str, device: Any) -> Any:
    """The torch dtype of unquantised weights in ``mode``."""
    import torch

    if mode in QUANTIZED:
        if not _cuda_usable(device):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def mixed_precision(mode: str, device: Any) -> str:
    """accelerate's ``mixed_precision`` for training in ``mode`` ("no", "bf16" or "fp16")."""
    import torch

    dtype = weight_dtype(mode, device)
    return {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def quantization_config(mode: str, device: Any) -> Any:
    """transformers' ``BitsAndBytesConfig`` for a quantised mode (None otherwise)."""
    if mode not in QUANTIZED:
        return None
    from transformers import BitsAndBytesConfig

    skip = list(SKIP_MODULES)
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=weight_dtype(mode, device), llm_int8_skip_modules=skip)


def load_kwargs(mode: str, device: Any) -> dict[str, Any]:
    """Keyword arguments of ``from_pretrained`` that load a model in ``mode`` for ``device``.

    A quantised model is placed on its GPU while loading (``device_map``):
    quantising on the CPU first and moving it afterwards is slow for a 7B model.
    """
    if mode not in TRAIN_PRECISIONS:
        raise ConfigError(f"precision {mode!r}: expected one of {', '.join(TRAIN_PRECISIONS)}")
    kwargs: dict[str, Any] = {"dtype": weight_dtype(mode, device)}
    if mode in QUANTIZED:
        if not bitsandbytes_installed():
            raise ConfigError(f'precision "{mode}" needs bitsandbytes, which is not installed',
                              hint="pip install 'prism-mcit[quant]'")
        kwargs["quantization_config"] = quantization_config(mode, device)
        if _cuda_usable(device):
            kwargs["device_map"] = {"": str(device) if ":" in str(device) else f"cuda:{local_rank()}"}
    return kwargs


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def compute_device() -> str:
    """Where a run computes: this process's GPU when there is one, else the CPU."""
    import torch

    return f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu"


def load_device(mode: str) -> str:
    """Where to load a model in ``mode``: quantised models load straight onto their GPU;
    others load on the CPU and accelerate moves them when training starts."""
    return compute_device() if mode in QUANTIZED else "cpu"


def in_memory_precision(model: Any, mode: str, model_path: str) -> Any:
    """Bring a model built in memory (an original-format LLaVA, converted on load) to ``mode``.

    Casting works for the float modes; bitsandbytes quantises while
    ``from_pretrained`` reads a folder, so a quantised mode needs the converted folder.
    """
    if mode in QUANTIZED:
        raise ConfigError(f"[backbone] model = {model_path!r} is an original-format LLaVA, converted in memory "
                          f"on load, and cannot be loaded in {mode}",
                          hint="convert it once with `prism ckpt convert SRC DST` and point [backbone] model at DST")
    dtype = weight_dtype(mode, "cpu")
    return model if next(model.parameters()).dtype == dtype else model.to(dtype)
