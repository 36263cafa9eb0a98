"""The ``llava`` backbone: llava-hf folders loaded with transformers' own classes.

``builtin:<name>`` names a model shipped in ``prism/assets/<name>`` (the tiny
LLaVA); anything else is a local folder or a hub id. Loading checks that the
processor, the model config and the vision config agree on how many tokens an
image becomes; a disagreement otherwise surfaces much later as "Image features
and image tokens do not match" in the middle of training.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prism.backbones.base import Backbone, LoadedBackbone
from prism.backbones.precision import in_memory_precision, load_kwargs
from prism.backbones.quiet import quiet_transformers
from prism.backbones.template import get_template
from prism.errors import ConfigError

BUILTIN_PREFIX = "builtin:"
TINY_METADATA_FILE = "prism_tiny.json"
ATTN_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")


def assets_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets"


def available_builtins() -> list[str]:
    """Names usable as ``builtin:<name>``: asset folders holding a config.json."""
    root = assets_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


def resolve_model_path(model: str, *, fetch: bool = True) -> Path | None:
    """A local folder for ``model``: a builtin, an existing folder, or a hub snapshot.

    ``fetch=False`` checks without downloading: a hub id gives None (``prism config validate``).
    """
    if model.startswith(BUILTIN_PREFIX):
        name = model[len(BUILTIN_PREFIX):]
        folder = assets_dir() / name
        if not (folder / "config.json").is_file():
            known = ", ".join(BUILTIN_PREFIX + n for n in available_builtins()) or "none installed"
            raise ConfigError(f"[backbone] model = {model!r}: no such builtin model; available: {known}")
        return folder
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(f"[backbone] model = {model!r}: folder {local} has no config.json",
                              hint="point at a llava-hf model folder")
        return local.resolve()
    if local.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ConfigError(f"[backbone] model = {model!r}: not a model folder or a hub id (owner/name)")
    return hub_snapshot(model, "[backbone] model") if fetch else None


def hub_snapshot(repo_id: str, key: str) -> Path:
    """The local snapshot of a hub model (downloaded if needed); a failure names the setting ``key``."""
    try:
        from huggingface_hub import snapshot_download

        with quiet_transformers():
            return Path(snapshot_download(repo_id=repo_id))
    except Exception as exc:  # network, auth, offline mode without a cached copy
        raise ConfigError(f"{key} = {repo_id!r}: not a local folder and could not be fetched from the hub "
                          f"({type(exc).__name__}: {exc})",
                          hint="download it first or give a local path; HF_HUB_OFFLINE=1 uses the cache only") from None


def flash_attention_usable(precision: str = "bf16") -> str | None:
    """None when flash_attention_2 can run here, else why not (it needs CUDA, the flash-attn
    package and half-precision compute)."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if importlib.util.find_spec("flash_attn") is None:
        return "needs the flash-attn package (pip install flash-attn --no-build-isolation)"
    if precision == "fp32":
        return "needs half-precision compute (train_precision bf16, fp16, 8bit or 4bit)"
    return None


def attn_implementation(attn: str, device: Any = None, precision: str = "bf16") -> str:
    """Map ``[backbone] attn`` to transformers' ``attn_implementation``.

    ``auto`` takes flash_attention_2 where it can run and sdpa elsewhere. The check is on
    the machine, not on ``device``: training models load on the CPU and move to their GPU later.
    """
    if attn not in ATTN_CHOICES:
        raise ConfigError(f"[backbone] attn = {attn!r}: expected one of {', '.join(ATTN_CHOICES)}")
    if attn == "auto":
        return "sdpa" if flash_attention_usable(precision) else "flash_attention_2"
    if attn == "flash_attention_2":
        reason = flash_attention_usable(precision)
        if reason:
            raise ConfigError(f"[backbone] attn = \"flash_attention_2\" {reason}",
                              hint="use attn = \"sdpa\" (or \"auto\") on this machine")
    return attn


# -- image-token geometry --------------------------------------------------------------------
def _has_class_token(vision_config: Any) -> bool:
    """CLIP and InternViT prepend a CLS token to the patches; SigLIP does not."""
    return "siglip" not in str(getattr(vision_config, "model_type", ""))


def _patch_grid(vision_config: Any) -> tuple[int, int]:
    """The patch grid as (rows, columns); InternVLVisionConfig keeps sizes as (height, width) pairs."""
    def pair(value: Any) -> tuple[int, int]:
        return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))

    (height, width), (patch_h, patch_w) = pair(vision_config.image_size), pair(vision_config.patch_size)
    return height // patch_h, width // patch_w


def _processed_size(image_processor: Any) -> tuple[int, int] | None:
    size = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else image_processor.size
    if not size:
        return None
    size = dict(size) if not isinstance(size, int) else {"height": size, "width": size}
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    return None


def image_token_count(model_config: Any, processor: Any | None, where: str = "the model") -> int:
    """How many tokens one ``<image>`` becomes, after checking that all three places agree.

    Places: the processor (``patch_size``, ``vision_feature_select_strategy``,
    ``num_additional_image_tokens``), the model config (``vision_feature_select_strategy``,
    ``image_seq_length``) and the vision config (``image_size``, ``patch_size``).
    """
    vision = model_config.vision_config
    strategy = model_config.vision_feature_select_strategy
    rows, cols = _patch_grid(vision)
    grid = rows * cols
    from_vision = grid + int(_has_class_token(vision)) - int(strategy == "default")
    seq = getattr(model_config, "image_seq_length", None)
    parts = [f"vision config (image_size={vision.image_size}, patch_size={vision.patch_size}) "
             f"gives {from_vision} features",
             f"model config (vision_feature_select_strategy={strategy!r}, image_seq_length={seq})"]
    ok = seq is None or seq == from_vision
    if processor is not None and getattr(processor, "patch_size", None):
        p_strategy = getattr(processor, "vision_feature_select_strategy", None)
        extra = int(getattr(processor, "num_additional_image_tokens", 0) or 0)
        size = _processed_size(processor.image_processor)
        if size is None:
            from_processor = None
        else:
            from_processor = ((size[0] // processor.patch_size) * (size[1] // processor.patch_size)
                              + extra - int(p_strategy == "default"))
        parts.insert(0, f"processor (patch_size={processor.patch_size}, vision_feature_select_strategy="
                        f"{p_strategy!r}, num_additional_image_tokens={extra}) gives {from_processor} tokens")
        ok = ok and from_processor == from_vision and p_strategy == strategy
    elif processor is not None:
        parts.insert(0, "processor has no patch_size")
        ok = False
    if not ok:
        raise ConfigError(
            f"the image-token geometry of {where} does not agree: " + "; ".join(parts),
            hint="the three must give the same count (CLIP with strategy \"default\" needs "
                 "num_additional_image_tokens=1 in processor_config.json)")
    return from_vision


def _vocabulary_sha256(tokenizer: Any) -> str:
    vocab = [tok for tok, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    return hashlib.sha256("\n".join(vocab).encode("utf-8")).hexdigest()


def _tiny_metadata(folder: Path) -> dict[str, Any] | None:
    path = folder / TINY_METADATA_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None


def _model_config(config: Any, folder: Path) -> Any:
    """``AutoConfig`` of a llava-hf folder; an unreadable or unknown config is a ConfigError."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"[backbone] model = {config.model!r}: cannot read {folder / 'config.json'} "
                          f"({reason})") from None


class LlavaBackbone(Backbone):
    """LLaVA-1.5 in llava-hf format (``LlavaForConditionalGeneration``), tiny variants included."""

    id = "llava"
    formats = (
        "llava-hf folder: LlavaForConditionalGeneration weights, config.json (model_type \"llava\"), "
        "tokenizer and processor",
        "original LLaVA-1.5 release folder (LlavaLlamaForCausalLM with mm_projector; the vision tower from "
        "the folder named by mm_vision_tower), converted on load or by `prism ckpt convert`",
        "hub id (owner/name) of either, from the local cache or downloaded",
        "builtin:<name>: a tiny model shipped with prism, for CPU demos and tests",
    )

    def load(self, config: Any, *, device: Any = "cpu", precision: str | None = None) -> LoadedBackbone:
        from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
        from transformers import LlavaForConditionalGeneration

        from prism.backbones.llava_original import convert_if_original

        folder = resolve_model_path(config.model)
        attn = attn_implementation(getattr(config, "attn", "auto"), device,
                                   getattr(config, "train_precision", "fp32"))
        original = convert_if_original(config, folder, attn)  # the original LLaVA-1.5 release format
        model_config = original.model.config if original else _model_config(config, folder)
        if getattr(model_config, "model_type", None) != "llava":
            raise ConfigError(f"[backbone] model = {config.model!r}: {folder} holds a "
                              f"{getattr(model_config, 'model_type', '?')!r} model, not a llava-hf one")
        with quiet_transformers():
            try:
                processor = original.processor if original else AutoProcessor.from_pretrained(folder)
                tokenizer, image_processor = processor.tokenizer, processor.image_processor
            except (OSError, ValueError, TypeError, AttributeError):
                processor = None
                tokenizer = AutoTokenizer.from_pretrained(folder)
                image_processor = AutoImageProcessor.from_pretrained(folder)
            num_image_tokens = image_token_count(model_config, processor, where=str(folder))
            # precision None: [backbone] train_precision (prism.backbones.precision explains the modes)
            mode = precision or getattr(config, "train_precision", "fp32")
            model = in_memory_precision(original.model, mode, config.model) if original else \
                LlavaForConditionalGeneration.from_pretrained(folder, attn_implementation=attn,
                                                              **load_kwargs(mode, device))
        meta = _tiny_metadata(folder)
        if meta and meta.get("vocabulary_sha256") not in (None, _vocabulary_sha256(tokenizer)):
            raise ConfigError(f"{folder}: the tokenizer's vocabulary does not match the one the model "
                              f"was built with ({TINY_METADATA_FILE}); rebuild it with "
                              "`python -m prism.backbones.tiny build`")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.to(device)
        model.eval()
        image_token = getattr(tokenizer, "image_token", None) or getattr(processor, "image_token", "<image>")
        return LoadedBackbone(
            backbone_id=self.id,
            model_path=config.model,
            resolved_path=str(folder),
            model=model,
            tokenizer=tokenizer,
            image_processor=image_processor,
            template=get_template("tiny" if meta is not None else "vicuna_v1"),
            num_image_tokens=num_image_tokens,
            image_token=image_token,
            extra={"processor": processor, "attn_implementation": attn, "prism_tiny": meta,
                   "original_llava": original.info if original else None},
        )
