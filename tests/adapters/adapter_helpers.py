"""Helpers for adapter tests: a tiny random LLaVA (CLIP tower + Llama) built locally, no download."""

from __future__ import annotations

from typing import Any

import torch

from prism.backbones.base import TARGET_PRESETS

IMAGE_TOKEN = 3
ATTN = TARGET_PRESETS["attn"]
FFN = TARGET_PRESETS["ffn"]
ATTN_AND_FFN = TARGET_PRESETS["attn_and_ffn"]


def build_tiny_llava(seed: int = 0) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=100, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, image_seq_length=16,
        vision_feature_select_strategy="default", vision_feature_layer=-2, projector_hidden_act="gelu",
    )
    return LlavaForConditionalGeneration(config).eval()


def make_inputs(batch: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    """input_ids with 16 image tokens after a BOS, random text around them, and pixels."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 100, (batch, 26), generator=generator)
    ids[:, 0] = 1
    ids[:, 1:17] = IMAGE_TOKEN
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch, 3, 32, 32, generator=generator),
    }


def logits(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def perturb(adapters: Any, slot: str, seed: int = 0, scale: float = 0.05) -> None:
    """Give a slot a non-zero B so it changes outputs (a stand-in for training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapters.layers.values():
            if slot in layer.lora_B:
                weight = layer.lora_B[slot].weight
                weight.copy_(torch.randn(weight.shape, generator=generator) * scale)
