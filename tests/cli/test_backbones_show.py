"""`prism backbones show ID`: what a backbone loads and what this machine can run with it."""

from __future__ import annotations

import json

import torch

from prism.backbones.base import TARGET_PRESETS
from prism.backbones.describe import available_attention, describe_backbone
from tests.conftest import run_cli

ON_CPU = not torch.cuda.is_available()


def test_show_llava_json(tmp_path):
    result = run_cli(["backbones", "show", "llava", "--json"], cwd=tmp_path)
    assert result.code == 0, str(result)
    info = json.loads(result.stdout)
    assert info["id"] == "llava" and info["class"] == "prism.backbones.llava:LlavaBackbone"
    assert "LlavaForConditionalGeneration" in info["loads"]
    formats = " ".join(info["formats"])
    assert "llava-hf" in formats and "mm_vision_tower" in formats and "builtin:" in formats
    assert {"model": "builtin:tiny-llava", "vision_tower": "clip_vision_model"} in info["builtin_models"]
    assert info["target_presets"] == TARGET_PRESETS
    precisions = info["precisions"]
    assert list(precisions) == ["fp32", "bf16", "fp16", "8bit", "4bit"]
    assert precisions["fp32"] == {"available": True, "reason": None, "what": "fp32 weights"}
    if ON_CPU:
        assert precisions["fp16"]["available"] is False and precisions["fp16"]["reason"] == "needs a CUDA GPU"
        assert info["attention"]["flash_attention_2"]["available"] is False
        assert "CUDA" in info["attention"]["flash_attention_2"]["reason"]
    for mode in ("8bit", "4bit"):
        entry = precisions[mode]
        assert entry["available"] or "prism-mcit[quant]" in entry["reason"]
    assert info["attention"]["sdpa"] == {"available": True, "reason": None}
    assert info["attention_auto"] == "sdpa"


def test_show_llava_text(tmp_path):
    result = run_cli(["backbones", "show", "llava"], cwd=tmp_path, env={"COLUMNS": "220"})
    assert result.code == 0 and result.stdout == "", result
    text = result.stderr
    for needed in ("[backbone] model accepts", "attn_and_ffn", TARGET_PRESETS["ffn"], "precisions on",
                   "[infer] precision", "flash_attention_2", "routing_tower"):
        assert needed in text, needed
    if ON_CPU:
        assert "needs a CUDA GPU" in text


def test_show_unknown_backbone_suggests_the_close_one(tmp_path):
    result = run_cli(["backbones", "show", "lava"], cwd=tmp_path)
    assert result.code == 2, result
    assert "unknown backbone 'lava'" in result.stderr and "did you mean 'llava'" in result.stderr
    assert "Traceback" not in result.stderr


def test_subclass_without_its_own_formats_shows_its_docstring():
    info = describe_backbone("internvl")
    assert info["formats"] == []  # llava's list does not describe InternViT folders
    assert "InternVL" in info["loads"] and "``" not in info["loads"]


def test_attention_availability_on_a_gpu_name_without_flash_attn(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    found = available_attention("cuda:0")
    assert found["sdpa"] is None and "flash-attn" in found["flash_attention_2"]
