"""Real-shaped data for the scale test and bench/data_pipeline.py: a 336-px InternVL-architecture
model (tiny widths, random weights, built locally) and a UCIT-layout task of 336-px PNGs.

The geometry is InternVL-Chat 1.0's (336 px, patch 14, CLS dropped: 576 image tokens, ImageNet
normalisation), so a record's ``pixel_values`` are 3x336x336 fp32 = 1.35 MB as in the real task.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

IMAGE_SIZE = 336
PATCH_SIZE = 14
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 576
TASK = "ImageNet-R"
#: UCIT's layout (prism.benchmarks.ucit): instructions/<task>/{train,test_3000}.json, images under datasets/
TRAIN_FILE = f"instructions/{TASK}/train.json"
TEST_FILE = f"instructions/{TASK}/test_3000.json"
IMAGE_ROOT = "datasets"

_WORDS = ("red", "blue", "green", "yellow", "purple", "circle", "square", "triangle", "left", "right",
          "one", "two", "three", "shape", "image", "the", "a", "is", "on", "of")


def build_model(out: Path, seed: int = 0) -> Path:
    """Save a llava-hf folder of a randomly initialised 336-px InternVL-Chat-1.0-shaped model."""
    import torch
    from transformers import InternVLVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from prism.backbones import tiny
    from prism.backbones.intern_vit import imagenet_image_processor

    tokenizer = tiny.build_tokenizer()
    processor = LlavaProcessor(image_processor=imagenet_image_processor(IMAGE_SIZE), tokenizer=tokenizer,
                               patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, image_token=tiny.IMAGE_TOKEN)
    vision = InternVLVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=32,
                                  intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  norm_type="rms_norm", use_qk_norm=True, layer_scale_init_value=0.1,
                                  attention_bias=False, use_mean_pooling=True)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids(tiny.IMAGE_TOKEN),
                         image_seq_length=NUM_IMAGE_TOKENS, vision_feature_select_strategy="default",
                         vision_feature_layer=-1, projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    vocab = tiny.vocabulary()
    meta = {"builder": "tests.engine.scale_data", "purpose": "scale tests (random weights)", "template": "tiny",
            "vocabulary_sha256": tiny.vocabulary_hash(vocab), "image_size": IMAGE_SIZE,
            "num_image_tokens": NUM_IMAGE_TOKENS}
    return tiny.save_asset(Path(out), [model, processor], tiny.METADATA_FILE, meta)


def _image(index: int, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE), texture: bool = False):
    """A cheap but distinct picture: a two-colour split at a per-image position; with ``texture``,
    per-pixel noise too (decodes like a photograph rather than a flat drawing)."""
    from PIL import Image, ImageDraw

    rng = random.Random(index)
    width, height = size
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    x, y = rng.randrange(width // 2), rng.randrange(height // 2)
    draw.rectangle((x, y, x + width // 3, y + height // 3), fill=tuple(rng.randrange(256) for _ in range(3)))
    if texture:
        noise = Image.effect_noise(size, 40).convert("RGB")
        image = Image.blend(image, noise, 0.3)
    return image


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high)))


def write_task(root: Path, records: int, *, images: int = 64, text_only: float = 0.0, tests: int = 8,
               seed: int = 0, photos: bool = False) -> Path:
    """A UCIT folder holding one task (ImageNet-R) of ``records`` training records over ``images`` PNGs.

    Questions and answers have varied lengths (as real tasks do), ``text_only`` of the records
    have no image; records cycle through the images (VQA tasks share images between records).
    ``photos``: 500x375 textured JPEGs instead (what real tasks hold; the processor resizes them).
    """
    rng = random.Random(seed)
    root = Path(root)
    image_dir = root / IMAGE_ROOT / TASK
    image_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".jpg" if photos else ".png"
    for i in range(images):
        path = image_dir / f"{i:05d}{suffix}"
        if not path.exists():
            if photos:
                _image(i, (500, 375), texture=True).save(path, quality=90)
            else:
                _image(i).save(path)
    train = []
    for i in range(records):
        question = _sentence(rng, 3, 40)
        answer = _sentence(rng, 1, 24)
        record = {"id": f"r{i}", "conversations": [{"from": "human", "value": question},
                                                   {"from": "gpt", "value": answer}]}
        if rng.random() >= text_only:
            record["image"] = f"{TASK}/{i % images:05d}{suffix}"
            record["conversations"][0]["value"] = "<image>\n" + question
        train.append(record)
    test = [{"question_id": i, "image": f"{TASK}/{i % images:05d}{suffix}", "text": _sentence(rng, 3, 30),
             "answer": "red"} for i in range(tests)]
    folder = root / "instructions" / TASK
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.json").write_text(json.dumps(train), encoding="utf-8")
    (folder / "test_3000.json").write_text(json.dumps(test), encoding="utf-8")
    return root


def project_toml(model: Path, data: Path, *, steps: int = 2, batch: int = 4, extra: str = "") -> str:
    """A prism.toml training the 336-px model on the one task, without evaluation."""
    return f"""
[project]
name = "scale"
output_dir = "outputs"
seed = 0

[backbone]
id = "internvl"
model = "{model}"

[benchmark]
id = "ucit"
root = "{data}"
tasks = "0"

[method]
id = "ft_lora"

[train]
max_steps = {steps}
global_batch_size = {batch}
eval_after_each_task = false
save_every_steps = 0
{extra}
"""


def encoder():
    """What encoding needs of the 336-px model (tokenizer, processor, template), without the model."""
    from prism.backbones import tiny
    from prism.backbones.intern_vit import imagenet_image_processor
    from prism.backbones.template import get_template
    from prism.benchmarks.data import Encoder

    return Encoder(tiny.build_tokenizer(), imagenet_image_processor(IMAGE_SIZE), get_template("tiny"),
                   NUM_IMAGE_TOKENS, tiny.IMAGE_TOKEN, "scale-336")


def task_spec():
    from prism.benchmarks.base import TaskSpec

    return TaskSpec(TASK, TRAIN_FILE, TEST_FILE, "exact_match", image_root=IMAGE_ROOT)
