"""Builder of the tiny InternVL-Chat-1.0-shaped model shipped as ``builtin:tiny-internvl``.

Same architecture as the real thing, only tiny: a ``LlavaForConditionalGeneration``
whose tower is an ``InternVLVisionModel`` with RMSNorm, q/k-norm over all heads
and layer scale (48 px, patch 8, hidden 64, 3 layers), the plain two-layer GELU
projector, ImageNet mean/std and a Llama language model (hidden 128, 2 layers).
The release takes features from layer -4 of 48, leaving the last blocks
unused; with 3 blocks the equivalent is -2 (layer -4 would be the raw patch
embeddings). Tokenizer, vocabulary, template and pre-training data are
tiny-llava's (``prism.backbones.tiny``), so the synthetic benchmark tokenises
the same way. It is pre-trained only briefly (a few hundred steps): enough to
produce benchmark words, meant for plumbing tests of the ``internvl`` backbone,
not for the continual-learning demo (use ``builtin:tiny-llava`` for that).

``python -m prism.backbones.tiny_internvl build --out DIR [--steps N] [--seed S]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

from prism.backbones import tiny
from prism.backbones.intern_vit import imagenet_image_processor

BUILDER_VERSION = 2
IMAGE_SIZE = tiny.IMAGE_SIZE  # 48
PATCH_SIZE = tiny.PATCH_SIZE  # 8
VISION_LAYERS = 3
FEATURE_LAYER = -2
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # CLS dropped ("default" strategy)
DEFAULT_STEPS = 300
DEFAULT_BATCH_SIZE = 16


def build_config(tokenizer: Any) -> Any:
    from transformers import InternVLVisionConfig, LlamaConfig, LlavaConfig

    vision = InternVLVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=64,
                                  intermediate_size=128, num_hidden_layers=VISION_LAYERS, num_attention_heads=4,
                                  norm_type="rms_norm", use_qk_norm=True, layer_scale_init_value=0.1,
                                  attention_bias=False, use_mean_pooling=True)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlavaConfig(vision_config=vision, text_config=text,
                       image_token_index=tokenizer.convert_tokens_to_ids(tiny.IMAGE_TOKEN),
                       image_seq_length=NUM_IMAGE_TOKENS, vision_feature_select_strategy="default",
                       vision_feature_layer=FEATURE_LAYER, projector_hidden_act="gelu")


def build_untrained(seed: int = 0) -> tuple[Any, Any, Any]:
    """(model, tokenizer, processor) with random weights drawn from ``seed``."""
    import torch
    from transformers import LlavaForConditionalGeneration

    tokenizer = tiny.build_tokenizer()
    # InternViT prepends a CLS token like CLIP, so tiny-llava's processor geometry (+1, then -1) holds.
    processor = tiny.build_processor(tokenizer, imagenet_image_processor(IMAGE_SIZE))
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(build_config(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, tokenizer, processor


def build(out_dir: Path | str, steps: int = DEFAULT_STEPS, seed: int = 0, *, batch_size: int = DEFAULT_BATCH_SIZE,
          lr: float = 2e-3, progress: Callable[[int, int, float], None] | None = None) -> Path:
    """Build, briefly pre-train (``steps`` may be 0) and save a llava-hf folder at ``out_dir``, atomically."""
    import transformers

    out = Path(out_dir)
    started = time.perf_counter()
    model, tokenizer, processor = build_untrained(seed)
    losses = tiny.pretrain(model, tokenizer, processor, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                           progress=progress) if steps > 0 else []
    vocab = tiny.vocabulary()
    meta = {
        "builder": "prism.backbones.tiny_internvl",
        "builder_version": BUILDER_VERSION,
        "purpose": "plumbing tests of the internvl backbone (briefly pre-trained)",
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4) if losses else None,
        "vocabulary_size": len(vocab),
        "vocabulary_sha256": tiny.vocabulary_hash(vocab),
        "template": "tiny",
        "image_size": IMAGE_SIZE,
        "num_image_tokens": NUM_IMAGE_TOKENS,
        "vision_feature_layer": FEATURE_LAYER,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "transformers_version": transformers.__version__,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    return tiny.save_asset(out, [model, processor], tiny.METADATA_FILE, meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prism.backbones.tiny_internvl",
                                     description="Build prism's tiny InternVL-Chat-1.0-shaped model.")
    sub = parser.add_subparsers(dest="command", required=True)
    command = sub.add_parser("build", help="build, briefly pre-train and save it as a llava-hf folder")
    command.add_argument("--out", required=True, type=Path, help="output folder (replaced if present)")
    command.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    args = parser.parse_args(argv)
    if args.steps < 0:
        parser.error("--steps must be >= 0")

    started = time.perf_counter()
    every = max(1, args.steps // 10)

    def report(step: int, total: int, loss: float) -> None:
        if step % every == 0 or step == total:
            print(f"step {step}/{total}  loss {loss:.4f}  {time.perf_counter() - started:.0f}s",
                  file=sys.stderr, flush=True)

    out = build(args.out, steps=args.steps, seed=args.seed, batch_size=args.batch_size, progress=report)
    print(f"wrote {out} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
