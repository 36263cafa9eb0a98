"""The internvl backbone: InternViT tower conversion, builtin:tiny-internvl, geometry, CLI, errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from prism.backbones import intern_vit, tiny, tiny_internvl
from prism.backbones.base import TARGET_PRESETS
from prism.backbones.internvl import InternVLBackbone
from prism.backbones.llava import assets_dir, image_token_count
from prism.errors import ConfigError
from tests.conftest import run_cli

SHIPPED = assets_dir() / "tiny-internvl"


def _cfg(model: str, attn: str = "auto") -> SimpleNamespace:
    return SimpleNamespace(id="internvl", model=model, attn=attn, train_precision="fp32")


# -- a tiny tower in OpenGVLab's original format, and the original block math --------------
TOWER = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, patch_size=8,
             image_size=32, qkv_bias=True, qk_normalization=True, layer_norm_eps=1e-6, hidden_act="gelu")


def original_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the original parameter names (fused qkv, ls1/ls2, norm1/norm2)."""
    gen = torch.Generator().manual_seed(seed)
    d, m, p = config["hidden_size"], config["intermediate_size"], config["patch_size"]
    positions = (config["image_size"] // p) ** 2 + 1

    def rand(*shape, scale=0.2, shift=0.0):
        return torch.randn(*shape, generator=gen) * scale + shift

    tensors = {
        "embeddings.class_embedding": rand(1, 1, d),
        "embeddings.patch_embedding.weight": rand(d, 3, p, p, scale=0.05),
        "embeddings.patch_embedding.bias": rand(d),
        "embeddings.position_embedding": rand(1, positions, d),
    }
    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layers.{i}."
        tensors.update({
            layer + "attn.qkv.weight": rand(3 * d, d), layer + "attn.proj.weight": rand(d, d),
            layer + "attn.proj.bias": rand(d), layer + "ls1": rand(d, shift=0.5), layer + "ls2": rand(d, shift=0.5),
            layer + "norm1.weight": rand(d, shift=1.0), layer + "norm2.weight": rand(d, shift=1.0),
            layer + "mlp.fc1.weight": rand(m, d), layer + "mlp.fc1.bias": rand(m),
            layer + "mlp.fc2.weight": rand(d, m), layer + "mlp.fc2.bias": rand(d),
        })
        if config["qkv_bias"]:
            tensors[layer + "attn.qkv.bias"] = rand(3 * d)
        if config["qk_normalization"]:
            tensors[layer + "attn.q_norm.weight"] = rand(d, shift=1.0)
            tensors[layer + "attn.k_norm.weight"] = rand(d, shift=1.0)
    return tensors


def write_tower(folder: Path, config: dict, tensors: dict[str, torch.Tensor], fmt: str = "safetensors",
                prefix: str = "") -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(
        {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "num_channels": 3, **config}))
    named = {prefix + k: v.contiguous() for k, v in tensors.items()}
    if fmt == "safetensors":
        save_file(named, str(folder / "model.safetensors"))
    else:
        torch.save(named, folder / "pytorch_model.bin")
    return folder


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def reference_hidden_states(t: dict[str, torch.Tensor], config: dict, pixels: torch.Tensor) -> list[torch.Tensor]:
    """InternViT's forward written from the original weights: the embeddings, then every block's output."""
    d, heads, eps = config["hidden_size"], config["num_attention_heads"], config["layer_norm_eps"]
    head_dim = d // heads
    x = F.conv2d(pixels, t["embeddings.patch_embedding.weight"], t["embeddings.patch_embedding.bias"],
                 stride=config["patch_size"])
    batch, _, rows, cols = x.shape
    x = torch.cat([t["embeddings.class_embedding"].expand(batch, 1, d), x.flatten(2).transpose(1, 2)], dim=1)
    table = t["embeddings.position_embedding"]
    side = math.isqrt(table.shape[1] - 1)
    grid = table[:, 1:].reshape(1, side, side, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    x = x + torch.cat([table[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    states = [x]
    for i in range(config["num_hidden_layers"]):
        w = {k[len(f"encoder.layers.{i}."):]: v for k, v in t.items() if k.startswith(f"encoder.layers.{i}.")}
        h = _rms(x, w["norm1.weight"], eps)
        qkv = h @ w["attn.qkv.weight"].T + w.get("attn.qkv.bias", 0)
        q, k, v = qkv.reshape(batch, -1, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        if config["qk_normalization"]:  # over all heads at once
            q = _rms(q.transpose(1, 2).flatten(2), w["attn.q_norm.weight"], eps)
            k = _rms(k.transpose(1, 2).flatten(2), w["attn.k_norm.weight"], eps)
            q = q.view(batch, -1, heads, head_dim).transpose(1, 2)
            k = k.view(batch, -1, heads, head_dim).transpose(1, 2)
        attn = ((q * head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, -1, d) @ w["attn.proj.weight"].T + w["attn.proj.bias"]
        x = x + out * w["ls1"]
        h = _rms(x, w["norm2.weight"], eps)
        h = F.gelu(h @ w["mlp.fc1.weight"].T + w["mlp.fc1.bias"]) @ w["mlp.fc2.weight"].T + w["mlp.fc2.bias"]
        x = x + h * w["ls2"]
        states.append(x)
    return states


def _converted_tower(vision_config, state):
    from transformers import InternVLVisionModel

    model = InternVLVisionModel(vision_config).eval()
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    return model


@pytest.mark.parametrize("fmt, prefix, qkv_bias, run_size", [
    ("safetensors", "", True, None),
    ("bin", "model.vision_tower.vision_tower.", False, None),
    ("safetensors", "", True, 48),  # run at another size: the position table is resized like the original does
])
def test_original_tower_converts_and_matches_the_original_math(tmp_path, fmt, prefix, qkv_bias, run_size):
    config = {**TOWER, "qkv_bias": qkv_bias}
    tensors = original_tensors(config)
    folder = write_tower(tmp_path / "intern_vit_6b_tiny", config, tensors, fmt=fmt, prefix=prefix)
    assert intern_vit.is_intern_vit_folder(folder)

    vision_config, state, image_processor = intern_vit.load_intern_vit_tower(folder, image_size=run_size)
    size = run_size or config["image_size"]
    assert vision_config.model_type == "internvl_vision" and tuple(vision_config.image_size) == (size, size)
    assert vision_config.norm_type == "rms_norm" and vision_config.use_qk_norm
    assert vision_config.attention_bias is qkv_bias
    assert state["embeddings.position_embeddings"].shape == (1, (size // 8) ** 2 + 1, 32)
    assert list(image_processor.image_mean) == list(intern_vit.IMAGENET_MEAN)
    assert list(image_processor.image_std) == list(intern_vit.IMAGENET_STD)
    assert image_processor.crop_size["height"] == size

    tower = _converted_tower(vision_config, state)
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = tower(pixels, output_hidden_states=True).hidden_states
        want = reference_hidden_states(tensors, config, pixels)
    assert len(got) == len(want) == config["num_hidden_layers"] + 1
    for index, (a, b) in enumerate(zip(got, want)):
        assert torch.allclose(a, b, atol=1e-4, rtol=0), f"hidden state {index}: {(a - b).abs().max()}"
    assert (want[1] - want[0]).abs().max() > 0.1  # the blocks do something: the comparison is not vacuous


def test_converted_tower_inside_llava_selects_layer_minus_4_without_cls(tmp_path):
    """InternVL-Chat 1.0 takes hidden_states[-4] (embeddings counted) without CLS, then the GELU projector."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tensors = original_tensors(TOWER, seed=3)
    vision_config, state, _ = intern_vit.load_intern_vit_tower(write_tower(tmp_path / "InternViT-6B-x", TOWER, tensors))
    text = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2)
    config = LlavaConfig(vision_config=vision_config, text_config=text, image_token_index=31, image_seq_length=16,
                         vision_feature_select_strategy="default", vision_feature_layer=-4,
                         projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(state)
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = model.model.get_image_features(pixels, vision_feature_layer=-4,
                                                  vision_feature_select_strategy="default").pooler_output[0]
        projector = model.model.multi_modal_projector
        want = projector(reference_hidden_states(tensors, TOWER, pixels)[-4][:, 1:])[0]
    assert features.shape == (16, 16) and image_token_count(config, None) == 16
    assert torch.allclose(features, want, atol=1e-4, rtol=0)


def test_recognising_tower_folders(tmp_path):
    for name in ("intern_vit_6b_224px", "InternViT-6B-448px-V1-0", "pretrained/internvit6b", "OpenGVLab/InternViT-6B-224px",
                 "hub/models--OpenGVLab--InternViT-6B-224px/snapshots/0123abcd"):
        assert intern_vit.is_intern_vit_folder(name), name
    for name in ("openai/clip-vit-large-patch14-336", "InternVL-Chat-ViT-6B-Vicuna-7B", str(tmp_path / "nothing")):
        assert not intern_vit.is_intern_vit_folder(name), name
    by_config = write_tower(tmp_path / "renamed", TOWER, original_tensors(TOWER))
    assert intern_vit.is_intern_vit_folder(by_config)
    (by_config / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    assert not intern_vit.is_intern_vit_folder(by_config)


def test_run_image_size_follows_internvl_chat_1_0():
    release = {**TOWER, "image_size": 224, "patch_size": 14}
    assert intern_vit.run_image_size("pretrained/intern_vit_6b_224px", release) == 336
    assert intern_vit.run_image_size("pretrained/intern_vit_6b_448px", {**release, "image_size": 448}) == 448
    assert intern_vit.run_image_size("intern_vit_6b_tiny", TOWER) == 32
    snapshots = "hub/models--OpenGVLab--InternViT-6B-{}/snapshots/a448e0c1"  # the repository's name counts
    assert intern_vit.run_image_size(snapshots.format("224px"), release) == 336
    assert intern_vit.run_image_size(snapshots.format("448px-V1-0"), release) == 448


def test_release_sized_config_gives_576_image_tokens():
    """The real 1.0 geometry: 224-px InternViT-6B run at 336 px, patch 14, CLS dropped -> 576 tokens."""
    from transformers import LlamaConfig, LlavaConfig

    release = {**intern_vit.OPTIONAL_DEFAULTS, "hidden_size": 3200, "num_hidden_layers": 48,
               "num_attention_heads": 25, "intermediate_size": 12800, "patch_size": 14, "image_size": 224}
    size = intern_vit.run_image_size("intern_vit_6b_224px", release)
    vision = intern_vit.intern_vision_config(release, size)
    assert tuple(vision.image_size) == (336, 336) and vision.use_qk_norm and vision.norm_type == "rms_norm"
    config = LlavaConfig(vision_config=vision, text_config=LlamaConfig(), image_seq_length=576,
                         vision_feature_select_strategy="default", vision_feature_layer=-4)
    processor = SimpleNamespace(patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                image_processor=intern_vit.imagenet_image_processor(size))
    assert image_token_count(config, processor) == 576
    processor.num_additional_image_tokens = 0  # forgetting InternViT's CLS token is caught
    with pytest.raises(ConfigError, match="575"):
        image_token_count(config, processor)


# -- error cases -------------------------------------------------------------------------
def _drop(name):
    def edit(tensors, config):
        del tensors[name]
    return edit


def _reshape(name, shape):
    def edit(tensors, config):
        tensors[name] = torch.zeros(shape)
    return edit


def _add(name):
    def edit(tensors, config):
        tensors[name] = torch.zeros(3)
    return edit


def _config(**changes):
    def edit(tensors, config):
        config.update(changes)
    return edit


@pytest.mark.parametrize("edit, match", [
    (_drop("encoder.layers.1.mlp.fc2.bias"), "'encoder.layers.1.mlp.fc2.bias' is missing"),
    (_drop("encoder.layers.0.attn.q_norm.weight"), "'encoder.layers.0.attn.q_norm.weight' is missing"),
    (_drop("embeddings.class_embedding"), "'embeddings.class_embedding' is missing"),
    (_reshape("encoder.layers.2.mlp.fc1.weight", (64, 31)), r"'encoder.layers.2.mlp.fc1.weight' has shape \[64, 31\]"),
    (_reshape("encoder.layers.0.attn.qkv.weight", (32, 32)), r"'encoder.layers.0.attn.qkv.weight' has shape"),
    (_reshape("embeddings.position_embedding", (1, 20, 32)), "'embeddings.position_embedding' has 20 rows"),
    (_add("encoder.layers.9.ls1"), "encoder.layers.9.ls1"),
    (_config(num_hidden_layers=5), "'encoder.layers.4.attn.qkv.weight' is missing"),
    (_config(norm_type="layer_norm"), "norm_type"),
    (_config(hidden_size=30), "not divisible by num_attention_heads"),
    (_config(layer_norm_eps=1e-5), "layer_norm_eps"),
    (_config(model_type="clip_vision_model"), "not an InternViT tower"),
])
def test_bad_towers_are_config_errors_naming_the_problem(tmp_path, edit, match):
    config, tensors = dict(TOWER), original_tensors(TOWER)
    edit(tensors, config)
    folder = write_tower(tmp_path / "intern_vit_6b_bad", config, tensors)
    with pytest.raises(ConfigError, match=match) as err:
        intern_vit.load_intern_vit_tower(folder)
    assert str(folder) in str(err.value)


def test_tower_weights_carried_by_a_checkpoint_convert_against_the_tower_config(tmp_path):
    folder = write_tower(tmp_path / "intern_vit_6b", TOWER, original_tensors(TOWER))
    carried = original_tensors(TOWER, seed=7)
    embedded = {"model.vision_tower.vision_tower." + k: v for k, v in carried.items()}
    state = intern_vit.convert_intern_vit_weights(folder, embedded, source="the checkpoint")
    qkv = carried["encoder.layers.1.attn.qkv.weight"]
    assert torch.equal(state["encoder.layer.1.attention.k_proj.weight"], qkv[32:64])
    assert torch.equal(state["encoder.layer.1.attention.v_proj.weight"], qkv[64:])
    del embedded["model.vision_tower.vision_tower.encoder.layers.3.ls2"]
    with pytest.raises(ConfigError, match="the checkpoint: .*'model.vision_tower.vision_tower.encoder.layers.3.ls2'"):
        intern_vit.convert_intern_vit_weights(folder, embedded, source="the checkpoint")


def test_tower_folder_without_config_or_weights(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        intern_vit.load_intern_vit_tower(tmp_path / "intern_vit_6b_missing")
    folder = write_tower(tmp_path / "intern_vit_6b", TOWER, original_tensors(TOWER))
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="holds no weights"):
        intern_vit.load_intern_vit_tower(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ConfigError, match="no config.json"):
        intern_vit.load_intern_vit_tower(folder)


# -- builtin:tiny-internvl ------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded_tiny():
    return InternVLBackbone().load(_cfg("builtin:tiny-internvl"))


def test_builtin_tiny_internvl_loads_with_internvit_geometry(loaded_tiny):
    from transformers import InternVLVisionModel, LlavaForConditionalGeneration

    loaded = loaded_tiny
    assert loaded.backbone_id == "internvl" and loaded.model_path == "builtin:tiny-internvl"
    assert isinstance(loaded.model, LlavaForConditionalGeneration)
    assert isinstance(loaded.model.model.vision_tower, InternVLVisionModel)
    vision = loaded.model.config.vision_config
    assert vision.norm_type == "rms_norm" and vision.use_qk_norm and vision.use_mean_pooling
    assert loaded.model.config.vision_feature_select_strategy == "default"
    assert loaded.model.config.vision_feature_layer == loaded_tiny.extra["prism_tiny"]["vision_feature_layer"]
    assert loaded.num_image_tokens == 36 == (48 // 8) ** 2  # grid + CLS - 1 (dropped)
    assert loaded.template.name == "tiny"
    assert loaded.image_token_id == loaded.model.config.image_token_index
    assert list(loaded.image_processor.image_mean) == list(intern_vit.IMAGENET_MEAN)
    assert loaded.tokenizer.get_vocab() == tiny.build_tokenizer().get_vocab()  # tiny-llava's vocabulary


def test_shipped_tiny_internvl_matches_the_code():
    meta = json.loads((SHIPPED / tiny.METADATA_FILE).read_text())
    assert meta["builder"] == "prism.backbones.tiny_internvl"
    assert meta["builder_version"] == tiny_internvl.BUILDER_VERSION
    assert meta["vocabulary_sha256"] == tiny.vocabulary_hash(tiny.vocabulary()), (
        "rebuild: python -m prism.backbones.tiny_internvl build --out src/prism/assets/tiny-internvl")
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) < 2_300_000


def test_tiny_internvl_forward_backward_generate(loaded_tiny):
    from PIL import Image

    model, processor = loaded_tiny.model, loaded_tiny.extra["processor"]
    inputs = processor(images=[Image.new("RGB", (48, 48), "red"), Image.new("RGB", (60, 48), "blue")],
                       text=["USER: <image>\nDescribe the image. ASSISTANT:"] * 2, padding=True, return_tensors="pt")
    assert int((inputs["input_ids"][0] == loaded_tiny.image_token_id).sum()) == 36
    model.train()
    try:
        out = model(**inputs, labels=inputs["input_ids"])
        out.loss.backward()
        tower = model.model.vision_tower.encoder.layer
        assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
        assert tower[0].attention.q_norm.weight.grad.abs().sum() > 0  # gradients reach the tower
        assert tower[-1].mlp.fc2.weight.grad is None  # layer -2 of 3: the last block is not used, like the release
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert prompt_length < generated.shape[1] <= prompt_length + 4
    assert int(generated.max()) < len(loaded_tiny.tokenizer)


def test_lora_presets_target_the_language_model_only(loaded_tiny):
    from prism.adapters import inject_adapters

    linear = [name for name, module in loaded_tiny.model.named_modules() if isinstance(module, torch.nn.Linear)]
    assert any(n.startswith("model.vision_tower.") and n.endswith("q_proj") for n in linear)
    expected = {"attn": 4 * 2, "ffn": 3 * 2, "attn_and_ffn": 7 * 2, "all_linear": 7 * 2}
    for preset, count in expected.items():
        matched = [n for n in linear if re.fullmatch(TARGET_PRESETS[preset], n)]
        assert len(matched) == count, (preset, matched)
        assert all(n.startswith("model.language_model.layers.") for n in matched), preset
    model = InternVLBackbone().load(_cfg("builtin:tiny-internvl")).model
    adapters = inject_adapters(model, loaded_tiny.target_regex("attn"))
    assert adapters.model is model
    assert not any("vision_tower" in name and "lora" in name.lower() for name, _ in model.named_parameters())


def test_builder_is_deterministic_and_its_output_loads(tmp_path):
    model, tok, processor = tiny_internvl.build_untrained(seed=0)
    again, _, _ = tiny_internvl.build_untrained(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert processor.num_additional_image_tokens == 1 and processor.patch_size == 8
    out = tiny_internvl.build(tmp_path / "built", steps=2, batch_size=4)
    loaded = InternVLBackbone().load(_cfg(str(out)))
    assert loaded.num_image_tokens == 36 and loaded.extra["prism_tiny"]["steps"] == 2
    assert not list(tmp_path.glob(".built.tmp-*"))


def test_internvl_backbone_rejects_other_towers(tmp_path):
    with pytest.raises(ConfigError, match="clip_vision_model") as err:
        InternVLBackbone().load(_cfg("builtin:tiny-llava"))
    assert '"llava"' in str(err.value)
    original = tmp_path / "llava-v1.5-7b"
    original.mkdir()
    (original / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": 4096,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_projector_type": "mlp2x_gelu"}))
    with pytest.raises(ConfigError, match="not an InternViT-6B tower"):
        InternVLBackbone().load(_cfg(str(original)))
    config = json.loads((original / "config.json").read_text())
    (original / "config.json").write_text(json.dumps({**config, "mm_vision_tower": "./pretrained/intern_vit_6b_224px"}))
    override = SimpleNamespace(**vars(_cfg(str(original))), vision_tower=str(tmp_path / "clip-vit-large"))
    with pytest.raises(ConfigError, match=r"named by \[backbone\] vision_tower is not an InternViT-6B tower"):
        InternVLBackbone().load(override)


# -- through the command line ------------------------------------------------------------------
def test_cli_trains_tiny_internvl_on_the_synthetic_benchmark(project):
    sets = ["train.max_steps=2", "train.global_batch_size=8", "benchmark.max_train_samples=16",
            "benchmark.max_test_samples=3", "infer.batch_size=8",
            "backbone.id=internvl", "backbone.model=builtin:tiny-internvl"]
    args = ["train", "--tasks", "0", "--json"]
    for item in sets:
        args += ["--set", item]
    result = run_cli(args, cwd=project)
    assert result.code == 0, str(result)
    data = json.loads(result.stdout)
    assert data["tasks"] == ["colour"] and len(data["matrix"]) == 1
    checkpoint = project / "outputs/checkpoints/synthetic/ft_lora/Task0_internvl"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    predictions = project / "outputs/predictions/synthetic/ft_lora/Task0_internvl/colour.jsonl"
    assert len(predictions.read_text().splitlines()) == 3


# -- the original InternVL-Chat 1.0 release format, end to end -----------------------------------
LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5, hidden_act="silu",
             initializer_range=0.1)
CHAT_TOWER = {**TOWER, "image_size": 48}  # 4 blocks: layer -4 is the first block's output


def _sentencepiece_model() -> bytes:
    """A small Llama-style BPE sentencepiece model over the synthetic benchmark's words."""
    import io

    import sentencepiece as spm

    from prism.backbones.template import VICUNA_SYSTEM
    from prism.benchmarks import synthetic as syn

    corpus = tiny.base_texts() + syn.vocabulary_texts() + [VICUNA_SYSTEM, "USER: <image>\n ASSISTANT:"] * 3
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=400, model_type="bpe", byte_fallback=True,
        split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, num_threads=1,
        minloglevel=2)
    return model.getvalue()


@pytest.fixture(scope="module")
def original_chat(tmp_path_factory) -> SimpleNamespace:
    """``root/internvl-chat-tiny`` in the release layout, its tower in ``root/intern_vit_6b_tiny``."""
    import sentencepiece as spm
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    pytest.importorskip("prism.backbones.llava_original")
    root = tmp_path_factory.mktemp("internvl-chat-1.0")
    tower = original_tensors(CHAT_TOWER, seed=5)
    write_tower(root / "intern_vit_6b_tiny", CHAT_TOWER, tower)
    ckpt = root / "internvl-chat-tiny"
    ckpt.mkdir()
    proto = _sentencepiece_model()
    (ckpt / "tokenizer.model").write_bytes(proto)
    (ckpt / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None, "model_max_length": 2048}))
    vocab = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    (ckpt / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "vocab_size": vocab, **LLAMA,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
        "torch_dtype": "float32", "mm_vision_tower": "../intern_vit_6b_tiny", "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -4, "mm_vision_select_feature": "patch", "mm_hidden_size": 32,
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "image_aspect_ratio": "pad"}))
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **LLAMA)).eval()
    first, second = torch.nn.Linear(32, 64), torch.nn.Linear(64, 64)
    state = {**llama.state_dict(), "model.mm_projector.0.weight": first.weight, "model.mm_projector.0.bias": first.bias,
             "model.mm_projector.2.weight": second.weight, "model.mm_projector.2.bias": second.bias}
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(ckpt / "model.safetensors"))
    return SimpleNamespace(ckpt=ckpt, tower=tower, llama=llama, projector=(first, second), vocab=vocab)


def test_original_internvl_chat_release_loads_and_matches_the_original_computation(original_chat):
    from transformers import InternVLVisionModel

    from prism.benchmarks import synthetic as syn
    from prism.benchmarks.data import encode_text, pixel_values

    loaded = InternVLBackbone().load(_cfg(str(original_chat.ckpt)))
    assert loaded.backbone_id == "internvl" and loaded.template.name == "vicuna_v1"
    assert isinstance(loaded.model.model.vision_tower, InternVLVisionModel)
    assert loaded.extra["original_llava"]["vision_tower_kind"] == "intern_vit"
    assert loaded.model.config.vision_feature_layer == -4 and loaded.num_image_tokens == 36
    assert list(loaded.image_processor.image_mean) == list(intern_vit.IMAGENET_MEAN)

    import random

    image = syn.render_scene(syn.random_scene(random.Random(3), 2))
    ids, _ = encode_text([("human", "<image>\nWhat colour is the shape?")], loaded, num_images=1,
                         add_generation_prompt=True)
    pixels = pixel_values([image], loaded.image_processor)
    with torch.no_grad():
        logits = loaded.model(input_ids=ids[None], pixel_values=pixels,
                              attention_mask=torch.ones_like(ids)[None]).logits[0]
        # The original computation: InternViT hidden_states[-4] without CLS, mlp2x_gelu, spliced into Vicuna.
        first, second = original_chat.projector
        patches = reference_hidden_states(original_chat.tower, CHAT_TOWER, pixels)[-4][0, 1:]
        features = second(F.gelu(first(patches)))
        is_image = ids == loaded.image_token_id
        assert int(is_image.sum()) == 36
        embeds = original_chat.llama.get_input_embeddings()(torch.where(is_image, 0, ids)).clone()
        embeds[is_image] = features
        reference = original_chat.llama(inputs_embeds=embeds[None]).logits[0]
    assert torch.allclose(logits[:, :original_chat.vocab], reference, atol=1e-4, rtol=0)


def test_cli_trains_and_generates_with_an_original_internvl_chat_release(original_chat, project):
    """The release layout (flat Llama config + mm_* keys, InternViT tower folder) through `prism train`."""
    sets = ["train.max_steps=2", "train.global_batch_size=4", "benchmark.max_train_samples=8",
            "benchmark.max_test_samples=2", "infer.batch_size=4", "backbone.id=internvl",
            f"backbone.model={json.dumps(str(original_chat.ckpt))}"]
    args = ["train", "--tasks", "0", "--json"]
    for item in sets:
        args += ["--set", item]
    result = run_cli(args, cwd=project)
    assert result.code == 0, str(result)
    assert json.loads(result.stdout)["tasks"] == ["colour"]
    checkpoint = project / "outputs/checkpoints/synthetic/ft_lora/Task0_internvl"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    rows = (project / "outputs/predictions/synthetic/ft_lora/Task0_internvl/colour.jsonl").read_text().splitlines()
    assert len(rows) == 2 and all("text" in json.loads(row) for row in rows)
