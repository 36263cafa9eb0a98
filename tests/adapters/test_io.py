"""Saving and loading adapters in PEFT's layout (no peft model involved; see test_peft_compat)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from adapter_helpers import ATTN, ATTN_AND_FFN, FFN, build_tiny_llava, logits, perturb
from safetensors.torch import load_file, save_file

from prism.adapters import (
    AdapterSet,
    inject_adapters,
    load_adapters,
    read_adapter_config,
    read_adapter_meta,
    save_adapters,
    token_router,
)
from prism.adapters.io import peft_target_modules
from prism.errors import CheckpointError

Q0 = "model.language_model.layers.0.self_attn.q_proj"


def test_single_slot_is_written_in_peft_layout(tmp_path: Path, inputs) -> None:
    model = build_tiny_llava()
    adapters = inject_adapters(model, ATTN)
    adapters.add_slot("task0", r=4, alpha=8, dropout=0.05, seed=0)
    perturb(adapters, "task0")
    meta = save_adapters(adapters, tmp_path, base_model_name_or_path="/models/tiny")
    weights = load_file(tmp_path / "adapter_model.safetensors")
    assert f"base_model.model.{Q0}.lora_A.weight" in weights
    assert len(weights) == 2 * len(adapters.layers)
    config = read_adapter_config(tmp_path)
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == ATTN and config["bias"] == "none" and config["task_type"] is None
    assert config["base_model_name_or_path"] == "/models/tiny" and config["lora_dropout"] == 0.05
    assert not any("slot" in key or "prism" in key for key in config)  # prism facts live elsewhere
    assert meta["layout"] == "peft" and meta["slots"]["task0"]["r"] == 4
    assert read_adapter_meta(tmp_path) == json.loads(json.dumps(meta))

    fresh = build_tiny_llava()
    target = inject_adapters(fresh, ATTN)
    assert load_adapters(target, tmp_path, slots=["restored"]) == ["restored"]
    assert target.spec("restored") == adapters.spec("task0")
    torch.testing.assert_close(logits(fresh, inputs), logits(model, inputs), atol=0, rtol=0)


def test_multi_slot_round_trip_with_routers(tmp_path: Path, inputs) -> None:
    model = build_tiny_llava()
    adapters = inject_adapters(model, FFN)
    experts = ["e0", "e1", "e2"]
    for i, name in enumerate(experts):
        adapters.add_slot(name, r=2 + i, alpha=4, seed=i)
        perturb(adapters, name, seed=i)
    adapters.activate(experts, [1.0, 0.5, 2.0])
    adapters.set_router(token_router(3, seed=0))
    expected = logits(model, inputs)
    meta = save_adapters(adapters, tmp_path)
    assert meta["layout"] == "multi-slot" and list(meta["slots"]) == experts
    assert meta["routers"]["router"]["layers"] == len(adapters.layers)
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert "base_model.model.model.language_model.layers.1.mlp.up_proj.lora_B.e2.weight" in keys
    assert "base_model.model.model.language_model.layers.1.mlp.up_proj.routers.router.weight" in keys

    fresh = build_tiny_llava()
    target = inject_adapters(fresh, FFN)
    target.set_router(token_router(3, seed=99))  # routers are the method's modules: create, then load
    assert load_adapters(target, tmp_path) == experts
    assert [target.spec(e).r for e in experts] == [2, 3, 4]
    target.activate(experts, [1.0, 0.5, 2.0])
    torch.testing.assert_close(logits(fresh, inputs), expected, atol=0, rtol=0)

    only = inject_adapters(build_tiny_llava(), FFN)
    only.add_router("router", token_router(3))
    assert load_adapters(only, tmp_path, slots=["e1"]) == ["e1"] and only.slots == ["e1"]


def test_saving_one_slot_of_many_gives_a_plain_lora(tmp_path: Path, inputs) -> None:
    model = build_tiny_llava()
    adapters = inject_adapters(model, ATTN)
    adapters.add_slot("a", r=2, alpha=4, seed=0)
    adapters.add_slot("b", r=4, alpha=4, seed=1)
    perturb(adapters, "b")
    meta = save_adapters(adapters, tmp_path, slots=["b"])
    assert meta["layout"] == "peft" and read_adapter_config(tmp_path)["r"] == 4
    adapters.activate(["b"])
    fresh = build_tiny_llava()
    target = inject_adapters(fresh, ATTN)
    assert load_adapters(target, tmp_path) == ["b"]  # the saved slot name is in the metadata
    torch.testing.assert_close(logits(fresh, inputs), logits(model, inputs), atol=0, rtol=0)


def test_target_modules_make_peft_wrap_exactly_the_saved_layers() -> None:
    model = build_tiny_llava()
    adapters = inject_adapters(model, ATTN_AND_FFN)
    every = set(adapters.layers)
    assert peft_target_modules(adapters, every) == ATTN_AND_FFN
    ffn = {p for p in every if ".mlp." in p}
    assert peft_target_modules(adapters, ffn) == ["down_proj", "gate_proj", "up_proj"]
    # CLIP has q_proj too, so layer names alone would over-match: full paths are used
    q_only = {p for p in every if p.endswith("q_proj")}
    assert peft_target_modules(adapters, q_only) == sorted(q_only)
    assert peft_target_modules(AdapterSet(model), every) == sorted(every)


def test_missing_or_unpickled_weights_are_refused(tmp_path: Path) -> None:
    adapters = inject_adapters(build_tiny_llava(), ATTN)
    with pytest.raises(CheckpointError, match="no adapter_model.safetensors"):
        load_adapters(adapters, tmp_path)
    (tmp_path / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_adapters(adapters, tmp_path)


def _peft_folder(folder: Path, tensors: dict[str, torch.Tensor], **config: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    base = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "bias": "none"}
    (folder / "adapter_config.json").write_text(json.dumps({**base, **config}))
    return folder


def _lora_pair(path: str, r: int = 4, in_f: int = 128, out_f: int = 128) -> dict[str, torch.Tensor]:
    return {
        f"base_model.model.{path}.lora_A.weight": torch.randn(r, in_f),
        f"base_model.model.{path}.lora_B.weight": torch.randn(out_f, r),
    }


def test_peft_written_folder_loads_with_config_alpha(tmp_path: Path) -> None:
    model = build_tiny_llava()
    adapters = inject_adapters(model, r".*language_model.*q_proj")
    tensors = {**_lora_pair(Q0), **_lora_pair(Q0.replace("layers.0", "layers.1"), r=2)}
    folder = _peft_folder(tmp_path, tensors, alpha_pattern={"layers.1.self_attn.q_proj": 3}, use_rslora=True)
    assert load_adapters(adapters, folder) == ["default"]
    layer0 = adapters.layers[Q0]
    layer1 = adapters.layers[Q0.replace("layers.0", "layers.1")]
    assert (layer0.specs["default"].r, layer0.specs["default"].alpha) == (4, 8.0)
    assert (layer1.specs["default"].r, layer1.specs["default"].alpha) == (2, 3.0)
    assert layer1.specs["default"].use_rslora
    torch.testing.assert_close(layer0.lora_B["default"].weight, tensors[f"base_model.model.{Q0}.lora_B.weight"])


@pytest.mark.parametrize(
    ("config", "message"),
    [({"use_dora": True}, "use_dora is set"), ({"fan_in_fan_out": True}, "fan_in_fan_out"),
     ({"bias": "all"}, "bias is 'all'"), ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
     ({"peft_type": "IA3"}, "peft_type is 'IA3'")],
)
def test_non_plain_lora_configs_are_refused(tmp_path: Path, config: dict, message: str) -> None:
    adapters = inject_adapters(build_tiny_llava(), ATTN)
    folder = _peft_folder(tmp_path, _lora_pair(Q0), **config)
    with pytest.raises(CheckpointError, match=message):
        load_adapters(adapters, folder)


def test_load_errors_name_the_key(tmp_path: Path) -> None:
    adapters = inject_adapters(build_tiny_llava(), ATTN)
    magnitude = {f"base_model.model.{Q0}.lora_magnitude_vector": torch.ones(128)}
    folder = _peft_folder(tmp_path / "dora", {**_lora_pair(Q0), **magnitude})
    with pytest.raises(CheckpointError, match="lora_magnitude_vector.*not a plain LoRA weight"):
        load_adapters(adapters, folder)

    proj = "model.multi_modal_projector.linear_1"
    folder = _peft_folder(tmp_path / "elsewhere", _lora_pair(proj, in_f=64))
    with pytest.raises(CheckpointError, match=rf"{proj}.lora_A.weight.*without an adapter layer"):
        load_adapters(adapters, folder)

    adapters.add_slot("default", r=2, alpha=4)
    folder = _peft_folder(tmp_path / "rank", _lora_pair(Q0))
    with pytest.raises(CheckpointError, match=rf"{Q0}.lora_A.default.weight.*\(4, 128\).*\(2, 128\)"):
        load_adapters(adapters, folder, strict=False)


def test_multi_slot_errors(tmp_path: Path) -> None:
    model = build_tiny_llava()
    adapters = inject_adapters(model, FFN)
    adapters.add_slot("a", r=2, alpha=4)
    adapters.add_slot("b", r=2, alpha=4)
    adapters.set_router(token_router(2))
    save_adapters(adapters, tmp_path)
    fresh = inject_adapters(build_tiny_llava(), FFN)
    with pytest.raises(CheckpointError, match=r"\['zzz'\] are not in"):
        load_adapters(fresh, tmp_path, slots=["zzz"])
    with pytest.raises(CheckpointError, match="(?s)routers.router.weight.*router 'router'.*set_router"):
        load_adapters(fresh, tmp_path)
