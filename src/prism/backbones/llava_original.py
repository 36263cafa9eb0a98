"""The original LLaVA-1.5 release format, converted to transformers' llava-hf layout.

``liuhaotian/llava-v1.5-7b`` style folders hold a flat Llama ``config.json`` plus
``mm_*`` keys (``LlavaLlamaForCausalLM``), Llama weights and the projector
(``model.mm_projector.0/2``) in fp16 shards, a sentencepiece tokenizer, and
usually no vision tower: the original code loads it from the folder named by
``mm_vision_tower``. prism converts such a folder in memory when it loads it
(``LlavaBackbone``) and on disk with ``prism ckpt convert``. Weights are read from
safetensors only — nothing is unpickled — so the release's ``.bin`` shards are
converted to ``model.safetensors`` once first (the error message gives the command).

The conversion follows what llava-hf's own conversion did: ``<image>`` (and
``<pad>`` when the tokenizer has none) are appended to the vocabulary, and the
embedding and output matrices grow to a multiple of 64 rows, new rows set to
the mean of the trained ones. The converted tokenizer prefixes "▁" to the text
after every special token (``legacy=True``), which reproduces the original
tokenisation of the text around ``<image>`` (LLaVA tokenises each side of the
image separately); it differs only after a ``</s>`` inside multi-turn text.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism.atomic import remove_stale_temporaries, replace_folder, temporary_sibling
from prism.backbones.model_files import read_config_json
from prism.backbones.llava_original_weights import (
    grow_rows,
    check_weight_files,
    embedded_tower_weights,
    map_weight_names,
    read_weights,
    weight_files,
)
from prism.backbones.quiet import quiet_transformers
from prism.backbones.vision_towers import TowerParts, load_vision_tower, resolve_vision_tower
from prism.errors import CheckpointError, ConfigError, UsageError

ORIGINAL_ARCHITECTURE = "LlavaLlamaForCausalLM"
ORIGINAL_MODEL_TYPES = ("llava", "llava_llama")
IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
VOCAB_MULTIPLE = 64  # llava-hf pads the vocabulary to a multiple of 64 rows
TEMPLATE = "vicuna_v1"
METADATA_FILE = "prism_converted.json"
DTYPES = ("auto", "float16", "bfloat16", "float32")
#: mm_vision_select_feature -> transformers' vision_feature_select_strategy.
SELECT_STRATEGIES = {"patch": "default", "cls_patch": "full"}
#: Flat config keys that describe the Llama language model (the rest are LLaVA's own).
TEXT_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "use_cache", "bos_token_id", "eos_token_id", "pretraining_tp", "tie_word_embeddings", "rope_theta",
    "rope_scaling", "rope_parameters", "attention_bias", "attention_dropout", "mlp_bias", "head_dim",
)
REQUIRED_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


# -- detection --------------------------------------------------------------------------------
def is_original_llava(folder: Path | str) -> bool:
    """True for an original LLaVA-1.5 folder: a flat ``llava``/``llava_llama`` (or
    ``LlavaLlamaForCausalLM``) config, without llava-hf's nested ``text_config``.

    Reads ``config.json`` as plain JSON: ``AutoConfig`` would take ``model_type
    "llava"`` for transformers' own (nested) llava config and fail obscurely.
    """
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict) or "text_config" in config:
        return False
    architectures = config.get("architectures") or []
    return ORIGINAL_ARCHITECTURE in architectures or config.get("model_type") in ORIGINAL_MODEL_TYPES


# -- configuration ------------------------------------------------------------------------------
def _side(value: Any) -> int:
    """An image or patch size that may be given as [height, width] (InternViT) or one int."""
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def _check_supported(config: dict[str, Any], where: Path) -> str:
    """Reject LLaVA variants llava-hf cannot express; return the feature-select strategy."""
    architectures = config.get("architectures") or [ORIGINAL_ARCHITECTURE]
    if ORIGINAL_ARCHITECTURE not in architectures or config.get("model_type") not in ORIGINAL_MODEL_TYPES:
        raise ConfigError(f"{where}: architectures {architectures} / model_type {config.get('model_type')!r}: "
                          f"only {ORIGINAL_ARCHITECTURE} (LLaVA-1.5 on Llama) can be converted")
    projector = config.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise ConfigError(f"{where}: mm_projector_type = {projector!r} is not supported; llava-hf's projector "
                          "is LLaVA-1.5's \"mlp2x_gelu\" (linear, GELU, linear)")
    for key in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if config.get(key):
            raise ConfigError(f"{where}: {key} = true (LLaVA-1.0 image markers) is not supported")
    if config.get("mm_patch_merge_type", "flat") != "flat":
        raise ConfigError(f"{where}: mm_patch_merge_type = {config['mm_patch_merge_type']!r} (LLaVA-NeXT) "
                          "is not supported; only \"flat\"")
    if config.get("image_aspect_ratio") not in (None, "", "square", "pad"):
        raise ConfigError(f"{where}: image_aspect_ratio = {config['image_aspect_ratio']!r} is not supported "
                          "(only \"pad\" or \"square\")")
    feature = config.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_STRATEGIES:
        raise ConfigError(f"{where}: mm_vision_select_feature = {feature!r}: expected one of "
                          f"{', '.join(SELECT_STRATEGIES)}")
    return SELECT_STRATEGIES[feature]


def build_llava_config(original: dict[str, Any], tower: TowerParts, *, image_token_id: int, pad_token_id: int,
                       vocab_rows: int, strategy: str, where: Path) -> Any:
    """transformers' ``LlavaConfig`` for an original checkpoint and its tower."""
    from transformers import LlamaConfig, LlavaConfig

    missing = [key for key in REQUIRED_TEXT_KEYS if key not in original]
    if missing:
        raise ConfigError(f"{where}: missing Llama settings {', '.join(missing)}")
    text = LlamaConfig(**{key: original[key] for key in TEXT_CONFIG_KEYS if key in original})
    text.vocab_size, text.pad_token_id = vocab_rows, pad_token_id
    vision = tower.config
    mm_hidden = original.get("mm_hidden_size")
    if mm_hidden is not None and mm_hidden != vision.hidden_size:
        raise ConfigError(f"{where}: mm_hidden_size = {mm_hidden} but the vision tower {tower.folder} has "
                          f"hidden_size {vision.hidden_size}")
    layer = int(original.get("mm_vision_select_layer", -2))
    if not -(vision.num_hidden_layers + 1) <= layer <= vision.num_hidden_layers:
        raise ConfigError(f"{where}: mm_vision_select_layer = {layer} is outside the tower's "
                          f"{vision.num_hidden_layers + 1} hidden states")
    grid = (_side(vision.image_size) // _side(vision.patch_size)) ** 2
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                       image_seq_length=grid + int(strategy == "full"), vision_feature_select_strategy=strategy,
                       vision_feature_layer=layer, projector_hidden_act="gelu", multimodal_projector_bias=True,
                       tie_word_embeddings=False)


# -- tokenizer and processor ---------------------------------------------------------------------
def load_tokenizer(folder: Path) -> Any:
    """The sentencepiece tokenizer as a (fast) Llama tokenizer, with ``<image>`` and a pad token.

    Always ``LlamaTokenizer``: ``AutoTokenizer`` can pick a generic class that
    drops sentencepiece's leading "▁" and gives other ids.
    """
    from transformers import LlamaTokenizer

    if not ((folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file()):
        raise ConfigError(f"{folder}: no tokenizer.model (the sentencepiece tokenizer of LLaVA-1.5)")
    lacking = [name for name, module in (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf"))
               if importlib.util.find_spec(module) is None]
    if lacking and not (folder / "tokenizer.json").is_file():  # transformers' own error names tiktoken
        raise ConfigError(f"{folder}/tokenizer.model: reading it needs {' and '.join(lacking)}",
                          hint="pip install sentencepiece protobuf")
    try:
        tokenizer = LlamaTokenizer.from_pretrained(folder, legacy=True, padding_side="left",
                                                   extra_special_tokens={"image_token": IMAGE_TOKEN})
    except ImportError as exc:
        raise ConfigError(f"{folder}/tokenizer.model: reading it needs sentencepiece and protobuf ({exc})",
                          hint="pip install sentencepiece protobuf") from None
    tokenizer.init_kwargs["legacy"] = True  # saved, so a reload keeps the "▁" after <image>
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def _pad_to_square(image_processor: Any) -> Any:
    """LLaVA-1.5's ``image_aspect_ratio = "pad"``: pad to a square of the mean colour, then as before."""
    from transformers import LlavaImageProcessorPil

    keys = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
            "do_normalize", "image_mean", "image_std", "do_convert_rgb")
    settings = {key: getattr(image_processor, key) for key in keys if getattr(image_processor, key, None) is not None}
    for key in ("size", "crop_size"):
        if key in settings and not isinstance(settings[key], dict):
            settings[key] = {k: v for k, v in dict(settings[key].__dict__).items() if v is not None}
    return LlavaImageProcessorPil(**settings, do_pad=True)


def build_processor(tokenizer: Any, image_processor: Any, model_config: Any) -> Any:
    from transformers import LlavaProcessor

    # CLIP and InternViT put a CLS token before the patches: one additional token.
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=_side(model_config.vision_config.patch_size),
                          vision_feature_select_strategy=model_config.vision_feature_select_strategy,
                          num_additional_image_tokens=1, image_token=IMAGE_TOKEN)


# -- conversion ---------------------------------------------------------------------------------
@dataclass
class ConvertedLlava:
    """An original checkpoint as a llava-hf model, tokenizer and processor (in memory)."""

    model: Any
    processor: Any
    source: Path
    tower: TowerParts
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


def _torch_dtype(name: str, original: dict[str, Any], state: dict[str, Any]) -> Any:
    import torch

    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r}: expected one of {', '.join(DTYPES)}")
    if name == "auto":
        name = str(original.get("torch_dtype") or original.get("dtype") or "")
        if name not in DTYPES[1:]:
            embed = state.get("model.language_model.embed_tokens.weight")
            return embed.dtype if embed is not None else torch.float16
    return getattr(torch, name)


def convert_original_llava(folder: Path | str, *, vision_tower: str | None = None,
                           vision_tower_source: str = "[backbone] vision_tower", dtype: str = "float32",
                           attn_implementation: str = "sdpa") -> ConvertedLlava:
    """Build a ``LlavaForConditionalGeneration`` from an original LLaVA-1.5 folder, in memory.

    ``dtype`` "auto" keeps the checkpoint's own (fp16 for the releases).
    """
    from transformers import LlavaForConditionalGeneration

    source = Path(folder).resolve()
    where = source / "config.json"
    original = read_config_json(where)
    strategy = _check_supported(original, where)
    tower_folder = resolve_vision_tower(original.get("mm_vision_tower"), source, vision_tower, vision_tower_source)
    tokenizer = load_tokenizer(source)
    tower = load_vision_tower(tower_folder)
    state, embedded = map_weight_names(read_weights(weight_files(source)), source)
    if embedded:
        tower.state_dict = {**tower.state_dict, **embedded_tower_weights(tower, embedded, source)}
    state.update({"model.vision_tower." + key: tensor for key, tensor in tower.state_dict.items()})
    if "lm_head.weight" not in state and "model.language_model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"].clone()  # tied
    target = _torch_dtype(dtype, original, state)

    trained_rows = int(original["vocab_size"]) if "vocab_size" in original else len(tokenizer)
    rows = -(-max(len(tokenizer), trained_rows) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key in state:
            state[key] = grow_rows(state[key], rows)
    config = build_llava_config(original, tower, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                                pad_token_id=tokenizer.pad_token_id, vocab_rows=rows, strategy=strategy,
                                where=where)
    _check_weights(config, state, source)
    with quiet_transformers():
        model = LlavaForConditionalGeneration.from_pretrained(
            None, config=config, state_dict=state, dtype=target, attn_implementation=attn_implementation)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))
    image_processor = tower.image_processor
    if original.get("image_aspect_ratio") == "pad":
        image_processor = _pad_to_square(image_processor)
    info = {"format": "llava-1.5-original", "source": str(source), "vision_tower": str(tower_folder),
            "vision_tower_kind": tower.kind, "tower_weights_from_checkpoint": bool(embedded),
            "added_tokens": len(tokenizer) - trained_rows, "vocab_rows": rows, "dtype": str(target).split(".")[-1],
            "template": TEMPLATE}
    return ConvertedLlava(model, build_processor(tokenizer, image_processor, config), source, tower, info)


def convert_if_original(backbone_config: Any, folder: Path, attn_implementation: str) -> ConvertedLlava | None:
    """What ``LlavaBackbone.load`` needs for an original folder (fp32, in memory); None otherwise."""
    if not is_original_llava(folder):
        return None
    with quiet_transformers():
        return convert_original_llava(folder, vision_tower=getattr(backbone_config, "vision_tower", None),
                                      dtype="float32", attn_implementation=attn_implementation)


def _check_weights(config: Any, state: dict[str, Any], where: Path) -> None:
    """Every weight present with its shape: from_pretrained would silently re-initialise a missing one."""
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        expected = LlavaForConditionalGeneration(config).state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{where}: {len(missing)} weights are missing (e.g. {missing[0]})")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{where}: weight {key} has shape {tuple(state[key].shape)}, the config says "
                                  f"{tuple(tensor.shape)}")


def _describe_non_original(folder: Path) -> str:
    config = read_config_json(folder / "config.json")
    if config.get("model_type") == "llava" and "text_config" in config:
        return f"{folder} is already a llava-hf model; nothing to convert"
    return (f"{folder} is not an original LLaVA-1.5 checkpoint (config.json: model_type "
            f"{config.get('model_type')!r}, architectures {config.get('architectures')})")


def convert_checkpoint(src: Path | str, dst: Path | str, *, vision_tower: str | None = None,
                       dtype: str = "auto", force: bool = False) -> dict[str, Any]:
    """Write an original LLaVA-1.5 folder as a llava-hf folder at ``dst``, atomically.

    Checks everything cheap (paths, format, tower) before loading any weight.
    Returns what was written (the ``prism_converted.json`` record).
    """
    source, target = Path(src).expanduser(), Path(dst).expanduser()
    if not source.is_dir():
        raise ConfigError(f"{source}: no such folder")
    _check_apart(source, target)
    if not (source / "config.json").is_file():
        raise ConfigError(f"{source}: no config.json; not a model folder")
    if not is_original_llava(source):
        raise ConfigError(_describe_non_original(source))
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if target.exists() and not (force and target.is_dir()):
        raise ConfigError(f"{target} already exists" + ("; pass --force to replace it" if target.is_dir() else ""))
    original = read_config_json(source / "config.json")
    _check_supported(original, source / "config.json")
    resolve_vision_tower(original.get("mm_vision_tower"), source.resolve(), vision_tower, "--vision-tower")
    check_weight_files(weight_files(source))

    with quiet_transformers():
        converted = convert_original_llava(source, vision_tower=vision_tower, vision_tower_source="--vision-tower",
                                           dtype=dtype)
    save_converted(converted, target)
    return {**converted.info, "output": str(target.resolve())}


def _check_apart(source: Path, target: Path) -> None:
    """Refuse a DST that is SRC, holds it or lies inside it (symlinks resolved): replacing DST
    would delete the source, or write into it."""
    src, dst = source.resolve(), target.resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        relation = "is" if src == dst else "is inside" if src in dst.parents else "contains"
        raise UsageError(f"the output folder {target} {relation} the source {source}"
                         + (f" (resolved: {dst} and {src})" if (dst, src) != (target, source) else ""),
                         hint="write the llava-hf folder somewhere outside the source folder, e.g. beside it")


def save_converted(converted: ConvertedLlava, dst: Path) -> Path:
    """Save model, tokenizer and processor as a llava-hf folder; a crash leaves no half folder.

    Temporary folders that killed conversions left beside ``dst`` are removed first.
    """
    import prism
    import transformers

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dst)
    tmp = temporary_sibling(dst)
    try:
        with quiet_transformers():
            converted.model.save_pretrained(tmp)
            converted.processor.save_pretrained(tmp)
        record = {**converted.info, "prism_version": prism.__version__,
                  "transformers_version": transformers.__version__}
        (tmp / METADATA_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        replace_folder(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst
