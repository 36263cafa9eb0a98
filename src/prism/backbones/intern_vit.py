"""InternViT towers in OpenGVLab's original format, converted for transformers.

InternVL-Chat 1.0 (OpenGVLab/InternVL, ``internvl_chat_llava``) loads its vision
tower from a separate InternViT-6B folder written by OpenGVLab's own modelling
code: one fused ``attn.qkv`` projection, RMSNorms called ``norm1``/``norm2``,
layer scales ``ls1``/``ls2`` and q/k RMSNorms over all heads. transformers runs
the same block as ``InternVLVisionModel`` under other names and ships no
converter, so this module builds the matching ``InternVLVisionConfig``, renames
(and splits) the tensors and returns the preprocessing the original code used.
State-dict keys are relative to the tower module (``embeddings.cls_token``,
``encoder.layer.0.attention.q_proj.weight``, ...).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prism.backbones.model_files import index_shards, read_config_json
from prism.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import InternVLVisionConfig

#: Folder-name markers the original code uses to recognise an InternViT-6B tower (compared lower-cased).
NAME_MARKERS: tuple[str, ...] = ("intern_vit_6b", "internvit_6b", "internvit-6b", "internvit6b")
MODEL_TYPES: tuple[str, ...] = ("intern_vit_6b",)
ARCHITECTURE = "InternVisionModel"
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: InternVL-Chat 1.0 feeds the 224-px InternViT-6B 336-px images (448 when the folder name says so).
CHAT_IMAGE_SIZE = 336
#: Towers smaller than this are not OpenGVLab releases (test and tiny towers) and run at their own size.
SMALLEST_RELEASE_IMAGE_SIZE = 224
#: transformers' q/k RMSNorms have a fixed epsilon; the original takes ``layer_norm_eps``.
QK_NORM_EPS = 1e-6

#: config.json keys without which the tensor shapes are unknown.
REQUIRED_KEYS: tuple[str, ...] = ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                  "intermediate_size", "patch_size", "image_size")
#: Defaults of OpenGVLab's InternVisionConfig for keys a config.json may leave out.
OPTIONAL_DEFAULTS: dict[str, Any] = {
    "num_channels": 3, "qkv_bias": False, "qk_normalization": True, "hidden_act": "gelu",
    "norm_type": "rms_norm", "layer_norm_eps": 1e-6, "dropout": 0.0, "attention_dropout": 0.0,
    "initializer_factor": 0.1,
}


# -- recognising a tower folder ------------------------------------------------------------
def _says_intern_vit(config: dict[str, Any]) -> bool:
    return (str(config.get("model_type", "")) in MODEL_TYPES
            or ARCHITECTURE in (config.get("architectures") or []))


def _tower_name(folder: str | Path) -> str:
    """The name the tower was given: the folder's, or the repository's for a hub-cache snapshot
    (``models--OpenGVLab--InternViT-6B-448px-V1-0/snapshots/<commit>``)."""
    path = Path(str(folder))
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name[len("models--"):].replace("--", "/")
    return path.name


def is_intern_vit_folder(path: str | Path) -> bool:
    """Whether ``path`` names an InternViT tower: by folder name, like the original code, or by config.json.

    Works on paths that do not exist (a hub id or a path from another machine):
    then only the name is looked at. Never raises.
    """
    name = _tower_name(path).lower()
    if any(marker in name for marker in NAME_MARKERS):
        return True
    config = Path(str(path)).expanduser() / "config.json"
    try:
        return _says_intern_vit(json.loads(config.read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError, TypeError):
        return False


# -- configuration -------------------------------------------------------------------------
def read_tower_config(folder: Path) -> dict[str, Any]:
    """config.json of an original InternViT folder with OpenGVLab's defaults filled in, checked."""
    where = folder / "config.json"
    if not where.is_file():
        raise ConfigError(f"{folder} has no config.json", hint="point mm_vision_tower at an InternViT-6B folder")
    raw = read_config_json(where)
    if "model_type" in raw and raw["model_type"] not in MODEL_TYPES:
        raise ConfigError(f"{where}: model_type {raw['model_type']!r} is not an InternViT tower "
                          f"(expected {' or '.join(map(repr, MODEL_TYPES))})",
                          hint="InternVL-Chat 1.0 uses OpenGVLab's InternViT-6B (InternVisionModel)")
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}",
                          hint="an InternViT config.json states the tower's sizes; re-save it with OpenGVLab's code")
    config = {**OPTIONAL_DEFAULTS, **raw}
    for key in REQUIRED_KEYS + ("num_channels",):
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] <= 0:
            raise ConfigError(f"{where}: {key} = {config[key]!r} must be a positive integer")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ConfigError(f"{where}: hidden_size = {config['hidden_size']} is not divisible by "
                          f"num_attention_heads = {config['num_attention_heads']}")
    if config["image_size"] % config["patch_size"]:
        raise ConfigError(f"{where}: image_size = {config['image_size']} is not a multiple of "
                          f"patch_size = {config['patch_size']}")
    if config["num_channels"] != 3:
        raise ConfigError(f"{where}: num_channels = {config['num_channels']}; InternViT reads RGB images (3)")
    if config["norm_type"] != "rms_norm":
        raise ConfigError(f"{where}: norm_type = {config['norm_type']!r} is not supported",
                          hint="InternVL-Chat 1.0's InternViT-6B uses RMSNorm (\"rms_norm\"); LayerNorm "
                               "towers belong to later InternVL designs")
    from transformers.activations import ACT2FN

    if config["hidden_act"] not in ACT2FN:
        raise ConfigError(f"{where}: hidden_act = {config['hidden_act']!r} is not an activation transformers knows")
    if config["qk_normalization"] and not math.isclose(float(config["layer_norm_eps"]), QK_NORM_EPS):
        raise ConfigError(f"{where}: layer_norm_eps = {config['layer_norm_eps']} with qk_normalization is not "
                          f"supported: transformers' q/k norms use eps {QK_NORM_EPS}",
                          hint="every released InternViT-6B uses 1e-6")
    return config


def run_image_size(folder: str | Path, config: dict[str, Any]) -> int:
    """The image size InternVL-Chat 1.0 runs a tower at.

    The original code crops to 448 px when the tower folder's name contains
    "448" and to 336 px otherwise, whatever the tower was pre-trained at
    (InternViT-6B-224px is run at 336). Towers smaller than any release (tiny
    test towers) keep their own size.
    """
    if "448" in _tower_name(folder):
        return 448
    if config["image_size"] < SMALLEST_RELEASE_IMAGE_SIZE:
        return int(config["image_size"])
    return CHAT_IMAGE_SIZE


def intern_vision_config(config: dict[str, Any], image_size: int, where: str = "the tower") -> InternVLVisionConfig:
    """The ``InternVLVisionConfig`` that runs the original tower ``config`` at ``image_size`` px."""
    from transformers import InternVLVisionConfig

    if image_size <= 0 or image_size % config["patch_size"]:
        raise ConfigError(f"{where}: image size {image_size} is not a positive multiple of "
                          f"patch_size = {config['patch_size']}")
    return InternVLVisionConfig(
        hidden_size=config["hidden_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        intermediate_size=config["intermediate_size"],
        hidden_act=config["hidden_act"],
        attention_bias=bool(config["qkv_bias"]),
        use_qk_norm=bool(config["qk_normalization"]),
        norm_type="rms_norm",
        layer_norm_eps=float(config["layer_norm_eps"]),
        layer_scale_init_value=float(config["initializer_factor"]),
        attention_dropout=float(config["attention_dropout"]),
        projection_dropout=float(config["dropout"]),
        hidden_dropout_prob=0.0,
        image_size=image_size,
        patch_size=config["patch_size"],
        num_channels=3,
        use_absolute_position_embeddings=True,
        use_mask_token=False,
        use_mean_pooling=True,  # no final norm: InternViT ends with its last block
    )


def imagenet_image_processor(image_size: int) -> Any:
    """Resize the short side, centre-crop a square, normalise with ImageNet mean/std (as the original does).

    The PIL class: transformers' default needs torchvision, which prism does not require.
    """
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size},
                                 do_resize=True, do_center_crop=True, do_normalize=True,
                                 image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))


# -- weights -------------------------------------------------------------------------------
def _weight_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            return index_shards(index)
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise ConfigError(f"{folder} holds no weights (*.safetensors or pytorch_model*.bin)",
                      hint="an InternViT folder holds config.json and its weight files")


def _load_bin(file: Path) -> Any:
    """A torch.save file with weights_only (nothing unpickled), memory-mapped when its format allows."""
    import torch

    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
        return torch.load(file, map_location="cpu", weights_only=True)


def read_tower_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's weight files (safetensors, or .bin read with weights_only)."""
    import torch
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for file in _weight_files(folder):
        try:
            if file.suffix == ".safetensors":
                part = load_file(str(file))
            else:
                part = _load_bin(file)
        except Exception as exc:  # corrupt file, pickled objects weights_only refuses, ...
            raise ConfigError(f"cannot read weights {file}: {type(exc).__name__}: {exc}") from None
        if not isinstance(part, dict) or not all(isinstance(t, torch.Tensor) for t in part.values()):
            raise ConfigError(f"{file} is not a flat state dict of tensors")
        tensors.update(part)
    return tensors


def _tower_prefix(tensors: dict[str, Any], where: str) -> str:
    """The prefix in front of ``embeddings.class_embedding`` ("" for a tower folder of its own)."""
    anchor = "embeddings.class_embedding"
    anchors = sorted((k[: -len(anchor)] for k in tensors if k == anchor or k.endswith("." + anchor)), key=len)
    if not anchors:
        raise ConfigError(f"{where}: InternViT tensor 'embeddings.class_embedding' is missing",
                          hint="the folder must hold OpenGVLab's InternVisionModel weights (original names)")
    return anchors[0]


def _expected_shapes(config: dict[str, Any], positions: int) -> dict[str, tuple[int, ...]]:
    hidden, mlp, patch = config["hidden_size"], config["intermediate_size"], config["patch_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.class_embedding": (1, 1, hidden),
        "embeddings.patch_embedding.weight": (hidden, 3, patch, patch),
        "embeddings.patch_embedding.bias": (hidden,),
        "embeddings.position_embedding": (1, positions, hidden),
    }
    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layers.{i}."
        shapes[layer + "attn.qkv.weight"] = (3 * hidden, hidden)
        if config["qkv_bias"]:
            shapes[layer + "attn.qkv.bias"] = (3 * hidden,)
        if config["qk_normalization"]:
            shapes[layer + "attn.q_norm.weight"] = (hidden,)
            shapes[layer + "attn.k_norm.weight"] = (hidden,)
        shapes.update({
            layer + "attn.proj.weight": (hidden, hidden), layer + "attn.proj.bias": (hidden,),
            layer + "ls1": (hidden,), layer + "ls2": (hidden,),
            layer + "norm1.weight": (hidden,), layer + "norm2.weight": (hidden,),
            layer + "mlp.fc1.weight": (mlp, hidden), layer + "mlp.fc1.bias": (mlp,),
            layer + "mlp.fc2.weight": (hidden, mlp), layer + "mlp.fc2.bias": (hidden,),
        })
    return shapes


#: Original per-layer names (after ``encoder.layers.N.``) -> transformers' (after ``encoder.layer.N.``).
_LAYER_RENAMES: dict[str, str] = {
    "attn.q_norm.weight": "attention.q_norm.weight",
    "attn.k_norm.weight": "attention.k_norm.weight",
    "attn.proj.weight": "attention.projection_layer.weight",
    "attn.proj.bias": "attention.projection_layer.bias",
    "ls1": "lambda_1",
    "ls2": "lambda_2",
    "norm1.weight": "layernorm_before.weight",
    "norm2.weight": "layernorm_after.weight",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_EMBEDDING_RENAMES: dict[str, str] = {
    "embeddings.class_embedding": "embeddings.cls_token",
    "embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
}
_LAYER_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)")


def resize_position_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """The (1, 1 + n*n, D) position table on a ``grid`` x ``grid`` patch grid.

    Bicubic, align_corners=False, in float32, CLS row kept: the same resize the
    original code applies on every forward when the image grid differs from the
    table's, done once here.
    """
    import torch
    import torch.nn.functional as F

    rows = table.shape[1] - 1
    side = math.isqrt(rows)
    if side == grid:
        return table
    patches = table[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.reshape(1, table.shape[-1], grid * grid).permute(0, 2, 1).to(table.dtype)
    return torch.cat([table[:, :1], patches], dim=1).contiguous()


def convert_intern_vit_state_dict(tensors: dict[str, torch.Tensor], config: dict[str, Any], image_size: int,
                                  where: str = "the tower") -> dict[str, torch.Tensor]:
    """Original InternViT tensors (any common prefix) -> ``InternVLVisionModel`` state dict at ``image_size``.

    ``config`` is the tower's config.json as returned by :func:`read_tower_config`.
    Every expected tensor must be present with the shape the config implies, and
    no unknown tensor may sit under the tower's prefix: a silent partial load
    would leave random weights in the tower.
    """
    prefix = _tower_prefix(tensors, where)
    own = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    table = own["embeddings.position_embedding"] if "embeddings.position_embedding" in own else None
    rows = int(table.shape[1]) if table is not None and table.dim() == 3 else None
    side = math.isqrt(rows - 1) if rows and rows > 1 else 0
    if rows is not None and side * side + 1 != rows:
        raise ConfigError(f"{where}: InternViT tensor '{prefix}embeddings.position_embedding' has "
                          f"{rows} rows, not 1 + a square number of patch positions")
    # The table's own grid is the truth: released tables may have been resized past config.json's image_size.
    positions = rows if rows is not None else (config["image_size"] // config["patch_size"]) ** 2 + 1
    expected = _expected_shapes(config, positions)
    for name, shape in expected.items():
        if name not in own:
            raise ConfigError(f"{where}: InternViT tensor '{prefix}{name}' is missing",
                              hint="the weights do not match config.json (num_hidden_layers, qkv_bias, "
                                   "qk_normalization) or the checkpoint is incomplete")
        got = tuple(own[name].shape)
        if got != shape:
            raise ConfigError(f"{where}: InternViT tensor '{prefix}{name}' has shape {list(got)}, expected "
                              f"{list(shape)} from config.json (hidden_size={config['hidden_size']}, "
                              f"intermediate_size={config['intermediate_size']}, patch_size={config['patch_size']})")
    unknown = sorted(set(own) - set(expected))
    if unknown:
        shown = ", ".join(prefix + name for name in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ConfigError(f"{where}: {len(unknown)} tensor(s) that an InternViT tower of this config does not "
                          f"have: {shown}", hint="check num_hidden_layers, qkv_bias and qk_normalization in config.json")

    hidden = config["hidden_size"]
    converted: dict[str, Any] = {new: own[old] for old, new in _EMBEDDING_RENAMES.items()}
    converted["embeddings.position_embeddings"] = resize_position_table(table, image_size // config["patch_size"])
    for name, value in own.items():
        match = _LAYER_KEY.fullmatch(name)
        if match is None:
            continue
        index, rest = match.groups()
        target = f"encoder.layer.{index}."
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            # The fused projection's output rows are ordered (q, k, v) x heads x head_dim.
            kind = rest.rsplit(".", 1)[1]
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.split(hidden, dim=0)):
                converted[f"{target}attention.{part}.{kind}"] = chunk.contiguous()
        else:
            converted[target + _LAYER_RENAMES[rest]] = value
    return converted


def convert_intern_vit_weights(path: str | Path, tensors: dict[str, torch.Tensor], *, image_size: int | None = None,
                               source: str | None = None) -> dict[str, torch.Tensor]:
    """Original-named InternViT tensors from elsewhere (a checkpoint that carries its tower, any
    prefix), converted against the config.json of the tower folder ``path``; errors name ``source``."""
    folder = Path(path).expanduser()
    config = read_tower_config(folder)
    size = run_image_size(folder, config) if image_size is None else int(image_size)
    return convert_intern_vit_state_dict(tensors, config, size, where=source or str(folder))


def load_intern_vit_tower(path: str | Path, *, image_size: int | None = None,
                          ) -> tuple[InternVLVisionConfig, dict[str, torch.Tensor], Any]:
    """(``InternVLVisionConfig``, tower state dict, image processor) for an original InternViT folder.

    ``image_size`` defaults to what InternVL-Chat 1.0 runs the tower at (see
    :func:`run_image_size`); the position table is resized to it.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"InternViT tower folder {folder} does not exist",
                          hint="download the tower (e.g. OpenGVLab/InternViT-6B-224px) and point at its folder")
    config = read_tower_config(folder)
    size = run_image_size(folder, config) if image_size is None else int(image_size)
    vision_config = intern_vision_config(config, size, where=str(folder))
    state = convert_intern_vit_state_dict(read_tower_tensors(folder), config, size, where=str(folder))
    return vision_config, state, imagenet_image_processor(size)
