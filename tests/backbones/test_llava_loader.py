"""The llava backbone loader: builtins, local folders, geometry validation, quiet loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from prism.backbones.llava import LlavaBackbone, assets_dir, available_builtins, image_token_count
from prism.errors import ConfigError


def _cfg(model: str, attn: str = "auto") -> SimpleNamespace:
    return SimpleNamespace(id="llava", model=model, attn=attn, train_precision="fp32")


@pytest.fixture(scope="module")
def tiny():
    return LlavaBackbone().load(_cfg("builtin:tiny-llava"))


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(assets_dir() / "tiny-llava", folder)
    return folder


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for dotted, value in changes.items():
        target = data
        *parents, key = dotted.split("__")
        for parent in parents:
            target = target[parent]
        target[key] = value
    path.write_text(json.dumps(data))


def test_builtin_tiny_loads(tiny):
    assert LlavaBackbone.id == "llava"
    assert tiny.backbone_id == "llava" and tiny.model_path == "builtin:tiny-llava"
    assert Path(tiny.resolved_path) == assets_dir() / "tiny-llava"
    assert tiny.template.name == "tiny"
    assert tiny.num_image_tokens == 36
    assert tiny.image_token == "<image>"
    assert tiny.image_token_id == tiny.model.config.image_token_index
    assert tiny.tokenizer.is_fast
    assert not tiny.model.training
    assert next(tiny.model.parameters()).dtype == torch.float32
    assert tiny.extra["attn_implementation"] == "sdpa"
    assert tiny.extra["prism_tiny"]["builder"] == "prism.backbones.tiny"
    assert type(tiny.image_processor).__name__.startswith("CLIPImageProcessor")


def test_available_builtins_and_unknown_builtin():
    assert "tiny-llava" in available_builtins()
    with pytest.raises(ConfigError) as err:
        LlavaBackbone().load(_cfg("builtin:huge-llava"))
    assert "builtin:tiny-llava" in str(err.value)


def test_local_folder_without_tiny_metadata_uses_vicuna(copy):
    (copy / "prism_tiny.json").unlink()
    loaded = LlavaBackbone().load(_cfg(str(copy), attn="eager"))
    assert loaded.template.name == "vicuna_v1"
    assert loaded.extra["attn_implementation"] == "eager"
    assert loaded.resolved_path == str(copy.resolve())


@pytest.mark.parametrize("file, change", [
    ("processor_config.json", {"num_additional_image_tokens": 0}),
    ("processor_config.json", {"patch_size": 16}),
    ("processor_config.json", {"vision_feature_select_strategy": "full"}),
    ("config.json", {"image_seq_length": 37}),
    ("config.json", {"vision_config__image_size": 64}),
])
def test_geometry_mismatch_is_a_config_error(copy, file, change):
    _edit(copy / file, **change)
    with pytest.raises(ConfigError) as err:
        LlavaBackbone().load(_cfg(str(copy)))
    message = str(err.value)
    for setting in ("num_additional_image_tokens", "image_seq_length", "image_size", "patch_size",
                    "vision_feature_select_strategy"):
        assert setting in message


def test_image_token_count_for_llava_1_5_geometry():
    vision = SimpleNamespace(model_type="clip_vision_model", image_size=336, patch_size=14)
    model = SimpleNamespace(vision_config=vision, vision_feature_select_strategy="default", image_seq_length=576)
    processor = SimpleNamespace(patch_size=14, vision_feature_select_strategy="default",
                                num_additional_image_tokens=1,
                                image_processor=SimpleNamespace(do_center_crop=True,
                                                                crop_size={"height": 336, "width": 336}))
    assert image_token_count(model, processor) == 576
    assert image_token_count(model, None) == 576
    processor.num_additional_image_tokens = 0  # an old processor_config.json
    with pytest.raises(ConfigError, match="575"):
        image_token_count(model, processor)
    siglip = SimpleNamespace(vision_config=SimpleNamespace(model_type="siglip_vision_model", image_size=384,
                                                           patch_size=14),
                             vision_feature_select_strategy="full", image_seq_length=729)
    assert image_token_count(siglip, None) == 729


@pytest.mark.parametrize("attn, match", [("flash_attention_2", "CUDA"), ("fast", "expected one of")])
def test_bad_attention_settings(attn, match):
    with pytest.raises(ConfigError, match=match):
        LlavaBackbone().load(_cfg("builtin:tiny-llava", attn=attn))


def test_bad_folders(tmp_path, copy):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        LlavaBackbone().load(_cfg(str(empty)))
    with pytest.raises(ConfigError, match="not a model folder"):
        LlavaBackbone().load(_cfg(str(tmp_path / "missing" / "deeper")))
    _edit(copy / "config.json", model_type="clip")
    with pytest.raises(ConfigError):
        LlavaBackbone().load(_cfg(str(copy)))


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="could not be fetched"):
        LlavaBackbone().load(_cfg("prism-mcit/definitely-not-cached-model"))


def test_changed_vocabulary_is_detected(copy):
    _edit(copy / "prism_tiny.json", vocabulary_sha256="0" * 64)
    with pytest.raises(ConfigError, match="vocabulary"):
        LlavaBackbone().load(_cfg(str(copy)))


def test_loading_is_quiet(capfd):
    LlavaBackbone().load(_cfg("builtin:tiny-llava"))
    out, err = capfd.readouterr()
    assert out == "" and "Loading weights" not in err and "it/s" not in err


def test_loaded_model_runs_the_processor_path(tiny):
    """The saved LlavaProcessor expands <image> the same way prism's encoder does."""
    from PIL import Image

    processor = tiny.extra["processor"]
    inputs = processor(images=[Image.new("RGB", (48, 48), "red")],
                       text=["USER: <image>\nDescribe the image. ASSISTANT:"], return_tensors="pt")
    assert int((inputs["input_ids"] == tiny.image_token_id).sum()) == tiny.num_image_tokens
    with torch.no_grad():
        logits = tiny.model(**inputs).logits
    assert logits.shape[-1] == len(tiny.tokenizer)


def test_auto_attention_takes_flash_attention_where_it_can_run(monkeypatch):
    import importlib.util

    from prism.backbones.llava import attn_implementation

    assert attn_implementation("auto", "cpu", "bf16") == "sdpa"  # this machine: no CUDA
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a))
    assert attn_implementation("auto", "cpu", "bf16") == "flash_attention_2"
    assert attn_implementation("flash_attention_2", "cpu", "4bit") == "flash_attention_2"
    assert attn_implementation("auto", "cpu", "fp32") == "sdpa"  # flash-attn computes in half precision
    with pytest.raises(ConfigError, match="half-precision"):
        attn_implementation("flash_attention_2", "cpu", "fp32")
