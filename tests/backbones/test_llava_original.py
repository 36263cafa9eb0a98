"""The original LLaVA-1.5 release format: detected, converted on load and by `prism ckpt convert`.

A tiny checkpoint in the release's own layout is written locally (flat Llama
config + mm_* keys, fp16 safetensors shards with an index — prism reads no
``.bin`` pickles, tests/checkpoint/test_convert_safety.py — a sentencepiece
``tokenizer.model``, a separate CLIP tower folder with the old integer
preprocessor config), and the converted model is checked against a forward
pass computed straight from the original weights, the way LLaVA's code does it.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from prism.backbones.llava import LlavaBackbone
from prism.backbones.llava_original import (
    IMAGE_TOKEN, convert_checkpoint, is_original_llava, map_weight_names, resolve_vision_tower,
)
from prism.backbones.template import VICUNA_SYSTEM, get_template
from prism.errors import CheckpointError, ConfigError
from tests.conftest import run_cli

SELECT_LAYER = -2
TOWER_NAME = "tiny-clip-vit-48"
LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu",
             initializer_range=0.1)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
QUESTION = "What colour is the shape on the left?"


# -- the tiny original-format checkpoint --------------------------------------------------------
def _corpus() -> list[str]:
    """A few hundred sentences with the synthetic benchmark's and the template's words."""
    from prism.backbones import tiny
    from prism.benchmarks import synthetic as syn

    texts = tiny.base_texts() + syn.vocabulary_texts() + [VICUNA_SYSTEM]
    words = sorted({w for t in texts for w in syn.words_of(t)})
    rng = random.Random(0)
    template = get_template("vicuna_v1")
    for _ in range(300):
        question = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        answer = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        texts.append("".join(s for s, _ in template.render([("human", f"<image>\n{question}"),
                                                             ("gpt", answer)], False)))
    return texts


def _train_sentencepiece() -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    # Llama's settings: BPE, byte fallback, split digits, identity normalisation, dummy prefix.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=512, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2)
    return model.getvalue()


def _write_tower(folder: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(1)
    config = CLIPVisionConfig(image_size=48, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=3, num_attention_heads=4, projection_dim=32)
    CLIPVisionModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({  # the old integer form
        "crop_size": 48, "size": 48, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "resample": 3}))


def _original_config(vocab_size: int, tower: str) -> dict:
    return {
        "_name_or_path": "./checkpoints/vicuna-tiny", "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, **LLAMA,
        "max_length": 4096, "pretraining_tp": 1, "rope_scaling": None, "tie_word_embeddings": False,
        "torch_dtype": "float16", "transformers_version": "4.31.0", "use_cache": True, "vocab_size": vocab_size,
        "freeze_mm_mlp_adapter": False, "image_aspect_ratio": "pad", "image_grid_pinpoints": None,
        "mm_hidden_size": 32, "mm_projector_type": "mlp2x_gelu", "mm_resampler_type": None,
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": SELECT_LAYER, "mm_vision_tower": tower, "tune_mm_mlp_adapter": False,
        "tune_mm_vision_resampler": False, "unfreeze_mm_vision_tower": False, "use_mm_proj": True,
    }


def _original_weights(vocab_size: int) -> dict[str, torch.Tensor]:
    """Llama + projector weights under the release's names, in fp16, with 4.31's rotary buffers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **LLAMA))
    state = {k: v for k, v in llama.state_dict().items()}
    first, second = torch.nn.Linear(32, 64), torch.nn.Linear(64, 64)
    state.update({"model.mm_projector.0.weight": first.weight, "model.mm_projector.0.bias": first.bias,
                  "model.mm_projector.2.weight": second.weight, "model.mm_projector.2.bias": second.bias})
    for i in range(LLAMA["num_hidden_layers"]):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.rand(8)
    return {k: v.detach().clone().half() for k, v in state.items()}


def _write_shards(folder: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": [k for k in names if "layers.1." not in k],
              "model-00002-of-00002.safetensors": [k for k in names if "layers.1." in k]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, folder / file)
        weight_map.update({k: file for k in keys})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> SimpleNamespace:
    """``root/llava-v1.5-tiny`` (the checkpoint) and ``root/tiny-clip-vit-48`` (its tower)."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("original-llava")
    tower, ckpt = root / TOWER_NAME, root / "llava-v1.5-tiny"
    ckpt.mkdir()
    _write_tower(tower)
    proto = _train_sentencepiece()
    (ckpt / "tokenizer.model").write_bytes(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    vocab = sp.get_piece_size()
    (ckpt / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "model_max_length": 2048, "padding_side": "right", "clean_up_tokenization_spaces": False}))
    (ckpt / "config.json").write_text(json.dumps(_original_config(vocab, f"../{TOWER_NAME}")))
    (ckpt / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2,
                                                             "pad_token_id": 0}))
    state = _original_weights(vocab)
    _write_shards(ckpt, state)
    return SimpleNamespace(root=root, ckpt=ckpt, tower=tower, sp=sp, vocab=vocab, state=state)


def _cfg(model: Path | str, **extra) -> SimpleNamespace:
    return SimpleNamespace(id="llava", model=str(model), attn="auto", train_precision="fp32", **extra)


@pytest.fixture(scope="module")
def converted(original):
    return LlavaBackbone().load(_cfg(original.ckpt))


@pytest.fixture(scope="module")
def image():
    from prism.benchmarks import synthetic as syn

    return syn.render_scene(syn.random_scene(random.Random(3), 2))


# -- the reference: LLaVA's own computation from the original weights ---------------------------
def _expand_to_square(image, colour):
    from PIL import Image

    width, height = image.size
    side = max(width, height)
    square = Image.new(image.mode, (side, side), colour)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def _reference_pixels(original, image) -> torch.Tensor:
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil.from_pretrained(original.tower)
    square = _expand_to_square(image.convert("RGB"), tuple(int(x * 255) for x in processor.image_mean))
    return processor(images=[square], return_tensors="pt")["pixel_values"]


def _original_ids(original, prompt: str) -> tuple[list[int], list[int]]:
    """LLaVA's tokenizer_image_token: each side of <image> tokenised on its own, bos first."""
    before, after = prompt.split(IMAGE_TOKEN)
    return [original.sp.bos_id()] + original.sp.encode(before), original.sp.encode(after)


def _reference_logits(original, image, prompt: str, select_layer: int = SELECT_LAYER) -> torch.Tensor:
    from transformers import CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    state = {k: v.float() for k, v in original.state.items()}
    tower = CLIPVisionModel.from_pretrained(original.tower, dtype=torch.float32).eval()
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=original.vocab, **LLAMA)).eval()
    llama.load_state_dict({k: v for k, v in state.items() if "mm_projector" not in k and "inv_freq" not in k})
    with torch.no_grad():
        hidden = tower(_reference_pixels(original, image), output_hidden_states=True).hidden_states
        patches = hidden[select_layer][:, 1:]  # mm_vision_select_feature "patch": drop CLS
        features = F.linear(F.gelu(F.linear(patches, state["model.mm_projector.0.weight"],
                                            state["model.mm_projector.0.bias"])),
                            state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])
        before, after = _original_ids(original, prompt)
        embed = llama.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor(before)), features[0], embed(torch.tensor(after))])
        return llama(inputs_embeds=embeds[None]).logits[0]


def _prompt_ids(backbone, question: str = QUESTION) -> torch.Tensor:
    """prism's own encoding of a vicuna_v1 generation prompt (one image)."""
    from prism.benchmarks.data import encode_text

    ids, _ = encode_text([("human", f"{IMAGE_TOKEN}\n{question}")], backbone, num_images=1,
                         add_generation_prompt=True)
    return ids


def _converted_logits(backbone, image, question: str = QUESTION) -> tuple[torch.Tensor, torch.Tensor]:
    from prism.benchmarks.data import pixel_values

    ids = _prompt_ids(backbone, question)
    with torch.no_grad():
        logits = backbone.model(input_ids=ids[None], pixel_values=pixel_values([image], backbone.image_processor),
                                attention_mask=torch.ones_like(ids)[None]).logits[0]
    return ids, logits


def _prompt(question: str = QUESTION) -> str:
    return get_template("vicuna_v1").prompt(f"{IMAGE_TOKEN}\n{question}")


# -- detection and loading ----------------------------------------------------------------------
def test_detection(original, tmp_path):
    from prism.backbones.llava import assets_dir

    assert is_original_llava(original.ckpt)
    assert not is_original_llava(assets_dir() / "tiny-llava")  # llava-hf: nested text_config
    assert not is_original_llava(original.tower) and not is_original_llava(tmp_path)
    llava_llama = tmp_path / "llava_llama"
    llava_llama.mkdir()
    config = _original_config(512, "x")
    config.update(model_type="llava_llama", architectures=None)
    (llava_llama / "config.json").write_text(json.dumps(config))
    assert is_original_llava(llava_llama)
    bare = tmp_path / "bare"  # flat "llava" without mm_* keys: LLaVA's defaults apply (a linear projector)
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model_type": "llava", "hidden_size": 64}))
    assert is_original_llava(bare)
    with pytest.raises(ConfigError, match="mm_projector_type = 'linear' is not supported"):
        LlavaBackbone().load(_cfg(bare))


def test_converted_model_matches_the_original_computation(original, converted, image):
    """(a) logits of the converted model equal LLaVA's forward from the original weights."""
    assert converted.template.name == "vicuna_v1"
    assert converted.num_image_tokens == 36
    info = converted.extra["original_llava"]
    assert info["vision_tower"] == str(original.tower.resolve()) and not info["tower_weights_from_checkpoint"]
    config = converted.model.config
    assert config.vision_feature_layer == SELECT_LAYER and config.vision_feature_select_strategy == "default"
    assert config.image_seq_length == 36 and config.projector_hidden_act == "gelu"
    assert next(converted.model.parameters()).dtype == torch.float32

    reference = _reference_logits(original, image, _prompt())
    ids, logits = _converted_logits(converted, image)
    assert logits.shape[0] == reference.shape[0] == len(ids)
    assert torch.allclose(logits[:, :original.vocab], reference, atol=1e-4, rtol=0)
    # The check has teeth: the last layer's features instead of the selected one differ clearly.
    wrong = _reference_logits(original, image, _prompt(), select_layer=-1)
    assert (logits[:, :original.vocab] - wrong).abs().max() > 1e-3


def test_vocabulary_grows_like_llava_hf(original, converted):
    tokenizer, model = converted.tokenizer, converted.model
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == original.vocab == model.config.image_token_index
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == original.vocab + 1
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == 576 and rows % 64 == 0 and model.lm_head.weight.shape[0] == rows  # 514 -> 576
    embed = original.state["model.embed_tokens.weight"].float()
    new_rows = model.get_input_embeddings().weight[original.vocab:]
    assert torch.allclose(new_rows, embed.mean(0).half().float().expand_as(new_rows))
    head = original.state["lm_head.weight"].float()
    assert torch.allclose(model.lm_head.weight[original.vocab:], head.mean(0).half().float().expand(64, -1))


def test_prompt_tokenises_like_the_original(original, converted):
    """(c) the text around <image> gets the ids LLaVA's own tokenisation gives."""
    for question in (QUESTION, "How many shapes do you see? Answer with a digit.", " leading space"):
        ids = _prompt_ids(converted, question).tolist()
        before, after = _original_ids(original, _prompt(question))
        image_id = converted.image_token_id
        assert ids == before + [image_id] * converted.num_image_tokens + after
        assert after[0] == original.sp.piece_to_id("▁")  # the "▁" after <image> that llava-hf drops


def test_answers_are_supervised_with_sentencepiece_tokens(converted):
    from prism.benchmarks.data import IGNORE_INDEX, encode_text

    ids, labels = encode_text([("human", f"{IMAGE_TOKEN}\n{QUESTION}"), ("gpt", "red")], converted,
                              num_images=1, add_generation_prompt=False)
    supervised = [converted.tokenizer.convert_ids_to_tokens(int(i)) for i in ids[labels != IGNORE_INDEX]]
    assert "".join(supervised).replace("▁", " ").strip() == "red</s>"


def test_pad_image_aspect_ratio_pads_with_the_mean_colour(original, converted):
    from PIL import Image

    wide = Image.new("RGB", (60, 30), (200, 30, 30))
    ours = converted.image_processor(images=[wide], return_tensors="pt")["pixel_values"]
    assert torch.allclose(ours, _reference_pixels(original, wide), atol=1e-5)


# -- prism ckpt convert --------------------------------------------------------------------------
def _prism(args: list[str]) -> tuple[int, str]:
    """The CLI in this process (torch is already imported here): exit code and stdout."""
    import contextlib

    from prism.cli.app import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main(args)
    return exited.value.code, out.getvalue()


@pytest.fixture(scope="module")
def converted_folder(original) -> Path:
    dst = original.root / "llava-v1.5-tiny-hf"
    code, stdout = _prism(["ckpt", "convert", str(original.ckpt), str(dst), "--dtype", "float32", "--json"])
    assert code == 0
    assert json.loads(stdout)["output"] == str(dst.resolve())
    return dst


def test_convert_writes_a_llava_hf_folder_with_the_same_logits(original, converted, converted_folder, image):
    """(b) the written folder, loaded by the plain llava-hf path, equals convert-on-load."""
    files = {p.name for p in converted_folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json", "prism_converted.json"} <= files
    assert not any(name.endswith(".bin") for name in files) and not is_original_llava(converted_folder)
    loaded = LlavaBackbone().load(_cfg(converted_folder))
    assert loaded.extra["original_llava"] is None and loaded.template.name == "vicuna_v1"
    assert type(loaded.image_processor).__name__.startswith("LlavaImageProcessor")
    assert loaded.image_processor.do_pad
    ids, logits = _converted_logits(loaded, image)
    ids_on_load, logits_on_load = _converted_logits(converted, image)
    assert torch.equal(ids, ids_on_load)
    assert torch.allclose(logits, logits_on_load, atol=1e-5, rtol=0)
    processor = loaded.extra["processor"]  # LlavaProcessor expands <image> to the same count
    inputs = processor(images=[image], text=[_prompt()], return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == ids.tolist()
    from transformers import LlamaTokenizer  # the saved tokenizer keeps the original tokenisation

    expanded = _prompt().replace(IMAGE_TOKEN, IMAGE_TOKEN * loaded.num_image_tokens)
    assert LlamaTokenizer.from_pretrained(converted_folder)(expanded)["input_ids"] == ids.tolist()


def test_convert_keeps_the_checkpoints_dtype_and_refuses_to_overwrite(original, converted_folder, tmp_path):
    from safetensors import safe_open

    dst = tmp_path / "fp16"
    convert_checkpoint(original.ckpt, dst)  # dtype auto: the release's fp16
    with safe_open(dst / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    before = (converted_folder / "model.safetensors").stat().st_mtime_ns
    result = run_cli(["ckpt", "convert", str(original.ckpt), str(converted_folder)], env={"COLUMNS": "1000"})
    assert result.code == 2 and "--force" in result.stderr, result
    assert (converted_folder / "model.safetensors").stat().st_mtime_ns == before
    convert_checkpoint(original.ckpt, dst, force=True, dtype="bfloat16")
    with safe_open(dst / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


# -- the tower: where it is found and where its weights come from -------------------------------
def test_vision_tower_resolution(original, tmp_path, monkeypatch):
    import huggingface_hub.constants

    assert resolve_vision_tower(f"../{TOWER_NAME}", original.ckpt) == original.tower.resolve()
    assert resolve_vision_tower(str(original.tower), tmp_path) == original.tower.resolve()
    assert resolve_vision_tower("missing", tmp_path, override=str(original.tower)) == original.tower.resolve()
    cache = tmp_path / "hub"
    snapshot = cache / "models--openai--clip-tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(original.tower, snapshot)
    (cache / "models--openai--clip-tiny" / "refs").mkdir()
    (cache / "models--openai--clip-tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve_vision_tower("openai/clip-tiny", tmp_path) == snapshot.resolve()
    with pytest.raises(ConfigError, match="mm_vision_tower = 'openai/clip-vit-large-patch14-336'"):
        resolve_vision_tower("openai/clip-vit-large-patch14-336", tmp_path)
    with pytest.raises(ConfigError, match=r"\[backbone\] vision_tower = 'nowhere'"):
        resolve_vision_tower(f"../{TOWER_NAME}", original.ckpt, override="nowhere")


def test_vision_tower_override_from_the_config(original, tmp_path):
    ckpt = tmp_path / "moved"
    shutil.copytree(original.ckpt, ckpt)  # ../tiny-clip-vit-48 no longer exists next to it
    with pytest.raises(ConfigError) as error:
        LlavaBackbone().load(_cfg(ckpt))
    assert "mm_vision_tower = '../tiny-clip-vit-48'" in str(error.value)
    assert "set [backbone] vision_tower = PATH" in str(error.value)
    loaded = LlavaBackbone().load(_cfg(ckpt, vision_tower=str(original.tower)))
    assert loaded.extra["original_llava"]["vision_tower"] == str(original.tower.resolve())


def _checkpoint_with_tower(original, folder: Path) -> Path:
    """A copy whose single weights file also holds a tuned tower (weights x 1.5), as DeepSpeed runs save it."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionModel

    shutil.copytree(original.ckpt, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    config = json.loads((folder / "config.json").read_text())
    config["mm_vision_tower"] = str(original.tower)
    (folder / "config.json").write_text(json.dumps(config))
    tower = CLIPVisionModel.from_pretrained(original.tower)
    tuned = {f"model.vision_tower.vision_tower.vision_model.{k}": v * 1.5 if k.endswith("weight") else v
             for k, v in tower.state_dict().items()}
    save_file({k: v.contiguous() for k, v in {**original.state, **tuned}.items()}, folder / "model.safetensors")
    return folder


def test_tower_weights_carried_by_the_checkpoint_win(original, converted, tmp_path):
    """Self-trained checkpoints may hold a tuned tower as model.vision_tower.vision_tower.vision_model.*."""
    loaded = LlavaBackbone().load(_cfg(_checkpoint_with_tower(original, tmp_path / "with-tower")))
    assert loaded.extra["original_llava"]["tower_weights_from_checkpoint"]
    key = "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(loaded.model.state_dict()[key], converted.model.state_dict()[key] * 1.5)


def test_safetensors_weights_and_clip_model_towers(original, converted, tmp_path, image):
    """A single model.safetensors works, and so does a full CLIPModel folder as the tower."""
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

    clip_folder = tmp_path / "clip-full"
    tower = CLIPVisionModel.from_pretrained(original.tower)
    clip = CLIPModel(CLIPConfig(vision_config=tower.config.to_dict(), projection_dim=32,
                                text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=4, vocab_size=99)))
    clip.vision_model.load_state_dict(tower.state_dict())  # a full CLIPModel, like openai's folders
    clip.save_pretrained(clip_folder)
    shutil.copy(original.tower / "preprocessor_config.json", clip_folder)
    ckpt = tmp_path / "safetensors"
    shutil.copytree(original.ckpt, ckpt, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    save_file({k: v.contiguous() for k, v in original.state.items()}, ckpt / "model.safetensors")
    loaded = LlavaBackbone().load(_cfg(ckpt, vision_tower=str(clip_folder)))
    assert torch.allclose(_converted_logits(loaded, image)[1], _converted_logits(converted, image)[1], atol=1e-5)


def test_an_intern_vit_tower_plugs_in_through_the_dispatch(original, monkeypatch, tmp_path):
    """A folder prism.backbones.intern_vit recognises is loaded (and carried tower weights are
    converted) by it; without the module, CLIP."""
    import importlib.machinery
    import sys
    import types

    from prism.backbones.vision_towers import load_clip_tower, tower_loaders

    monkeypatch.setitem(sys.modules, "prism.backbones.intern_vit", None)
    assert [kind for kind, _, _ in tower_loaders()] == ["clip"]
    calls = []
    fake = types.ModuleType("prism.backbones.intern_vit")
    fake.__spec__ = importlib.machinery.ModuleSpec("prism.backbones.intern_vit", None)
    fake.is_intern_vit_folder = lambda folder: Path(folder).name == TOWER_NAME
    fake.load_intern_vit_tower = lambda folder: calls.append(folder) or load_clip_tower(folder)
    monkeypatch.setitem(sys.modules, "prism.backbones.intern_vit", fake)
    assert [kind for kind, _, _ in tower_loaders()] == ["intern_vit", "clip"]
    loaded = LlavaBackbone().load(_cfg(original.ckpt))
    assert calls == [original.tower.resolve()]
    assert loaded.extra["original_llava"]["vision_tower_kind"] == "intern_vit"

    def convert(folder, tensors, source):  # stands in for the InternViT name converter
        calls.append((folder, sorted(tensors)[0], source))
        return {key[len("vision_model."):]: value for key, value in tensors.items()}

    fake.convert_intern_vit_weights = convert
    calls.clear()
    loaded = LlavaBackbone().load(_cfg(_checkpoint_with_tower(original, tmp_path / "with-tower")))
    assert calls[1][:2] == (original.tower.resolve(), "vision_model.embeddings.class_embedding")
    assert "model.vision_tower.vision_tower.*" in calls[1][2]
    assert loaded.extra["original_llava"]["tower_weights_from_checkpoint"]


def test_a_missing_protobuf_is_named(original, monkeypatch):
    import sys

    from prism.backbones.llava_original import load_tokenizer

    monkeypatch.setitem(sys.modules, "google.protobuf", None)
    with pytest.raises(ConfigError, match="needs protobuf"):
        load_tokenizer(original.ckpt)


# -- errors ---------------------------------------------------------------------------------------
def _edited(original, tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "edited"
    folder.mkdir(exist_ok=True)
    config = json.loads((original.ckpt / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("changes, match", [
    ({"mm_projector_type": "linear"}, "mm_projector_type = 'linear' is not supported"),
    ({"mm_projector_type": "mlp3x_gelu"}, "mlp3x_gelu"),
    ({"mm_vision_select_feature": "cls"}, "mm_vision_select_feature"),
    ({"image_aspect_ratio": "anyres"}, "image_aspect_ratio"),
    ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
])
def test_unsupported_variants_are_config_errors(original, tmp_path, changes, match):
    with pytest.raises(ConfigError, match=match):
        LlavaBackbone().load(_cfg(_edited(original, tmp_path, **changes)))


def test_broken_checkpoints(original, tmp_path):
    ckpt = tmp_path / "broken"
    shutil.copytree(original.ckpt, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["mm_vision_tower"] = str(original.tower)
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        LlavaBackbone().load(_cfg(ckpt))
    with pytest.raises(CheckpointError, match="unknown purpose"):
        map_weight_names({"model.mm_projector.1.weight": torch.zeros(1)}, ckpt)
    shutil.copy(original.ckpt / "model-00002-of-00002.safetensors", ckpt)
    (ckpt / "config.json").write_text(json.dumps({**config, "mm_hidden_size": 48}))
    with pytest.raises(ConfigError, match="mm_hidden_size = 48"):
        LlavaBackbone().load(_cfg(ckpt))


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and "Traceback" not in result.stderr, result
    assert len(lines) == 1 and lines[0].startswith("error: "), result
    return lines[0]


def test_cli_errors_are_one_line(original, tmp_path, repo_root):
    """(e) missing tower, non-LLaVA folders and missing paths: exit 2, one line, no traceback."""
    env = {"COLUMNS": "1000", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    no_tower = _edited(original, tmp_path, mm_vision_tower="openai/clip-vit-large-patch14-336")
    line = _one_error_line(run_cli(["ckpt", "convert", str(no_tower), str(tmp_path / "out")], env=env))
    assert "mm_vision_tower = 'openai/clip-vit-large-patch14-336'" in line and "--vision-tower" in line
    for name, config in (("llama", {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                    "hidden_size": 64}),
                         ("bert", {"model_type": "bert", "architectures": ["BertModel"]})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        line = _one_error_line(run_cli(["ckpt", "convert", str(folder), str(tmp_path / "out")], env=env))
        assert "not an original LLaVA-1.5 checkpoint" in line and repr(name) in line
        with pytest.raises(ConfigError, match=f"holds a '{name}' model"):
            LlavaBackbone().load(_cfg(folder))
    line = _one_error_line(run_cli(["ckpt", "convert", str(tmp_path / "nowhere"), str(tmp_path / "out")],
                                   env=env))
    assert "no such folder" in line
    hf = _one_error_line(run_cli(["ckpt", "convert", str(repo_root / "src/prism/assets/tiny-llava"),
                                  str(tmp_path / "out")], env=env))
    assert "already a llava-hf model" in hf
    assert not (tmp_path / "out").exists()


# -- the whole loop --------------------------------------------------------------------------------
def test_cli_trains_and_generates_with_an_original_checkpoint(original, project):
    """(d) `prism train` on the synthetic benchmark straight from the original folder."""
    sets = [f'backbone.model="{original.ckpt}"', "train.max_steps=2", "train.global_batch_size=4",
            "benchmark.max_train_samples=8", "benchmark.max_test_samples=2", "infer.batch_size=2",
            "infer.max_new_tokens=3"]
    result = run_cli(["train", "--tasks", "0", *[arg for s in sets for arg in ("--set", s)]], cwd=project)
    assert result.code == 0, str(result)
    predictions = list((project / "outputs").rglob("*.jsonl"))
    assert predictions, result
    rows = [json.loads(line) for p in predictions for line in p.read_text().splitlines() if line.strip()]
    answers = [row for row in rows if "question_id" in row]
    assert len(answers) == 2 and all(isinstance(row["text"], str) for row in answers)
