"""The acceptance test of the file format: stock peft reads prism's plain LoRA and vice versa."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adapter_helpers import ATTN, ATTN_AND_FFN, build_tiny_llava, logits, perturb

from prism.adapters import LoRALinear, inject_adapters, load_adapters, save_adapters

peft = pytest.importorskip("peft")


def _load_base(folder: Path):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(folder).eval()


def _peft_wrapped(peft_model) -> set[str]:
    prefix = "base_model.model."
    return {name[len(prefix):] for name, module in peft_model.named_modules()
            if isinstance(module, peft.tuners.lora.LoraLayer)}


def test_prism_lora_loads_in_stock_peft_with_the_same_logits(tmp_path: Path, inputs) -> None:
    model = build_tiny_llava()
    model.save_pretrained(tmp_path / "base")
    adapters = inject_adapters(model, ATTN_AND_FFN)
    adapters.add_slot("task0", r=4, alpha=8, dropout=0.05, seed=0)
    adapters.set_trainable(["task0"])
    adapters.activate(["task0"])
    optimizer = torch.optim.AdamW(adapters.parameters(["task0"]), lr=1e-2)
    model.train()
    for _ in range(2):
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    expected = logits(model, inputs)
    assert not torch.allclose(expected, logits(_load_base(tmp_path / "base"), inputs))  # training did something
    save_adapters(adapters, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))

    loaded = peft.PeftModel.from_pretrained(_load_base(tmp_path / "base"), tmp_path / "adapter").eval()
    assert _peft_wrapped(loaded) == set(adapters.layers)
    torch.testing.assert_close(logits(loaded, inputs), expected, atol=1e-5, rtol=0)


def test_peft_lora_loads_in_prism_with_the_same_logits(tmp_path: Path, inputs) -> None:
    build_tiny_llava().save_pretrained(tmp_path / "base")
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=ATTN, lora_dropout=0.1)
    peft_model = peft.get_peft_model(_load_base(tmp_path / "base"), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.eval()
    expected = logits(peft_model, inputs)
    peft_model.save_pretrained(tmp_path / "adapter")

    model = _load_base(tmp_path / "base")
    adapters = inject_adapters(model, ATTN)
    assert load_adapters(adapters, tmp_path / "adapter", slots=["task0"]) == ["task0"]
    assert adapters.spec("task0").r == 4 and adapters.spec("task0").alpha == 16
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "slot_layers",
    [r".*\.mlp\..*", r".*language_model.*q_proj", r"model\.language_model\.layers\.1\.mlp\.up_proj"],
    ids=["layer-names", "full-paths", "one-layer"],
)
def test_peft_targets_exactly_the_saved_layers(tmp_path: Path, inputs, slot_layers: str) -> None:
    model = build_tiny_llava()
    model.save_pretrained(tmp_path / "base")
    adapters = inject_adapters(model, ATTN_AND_FFN)
    adapters.add_slot("s", r=2, alpha=4, seed=1, layers=slot_layers)
    perturb(adapters, "s")
    save_adapters(adapters, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(_load_base(tmp_path / "base"), tmp_path / "adapter").eval()
    assert _peft_wrapped(loaded) == set(adapters.slot_layers("s"))
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), atol=1e-5, rtol=0)


def test_per_layer_ranks_survive_in_peft(tmp_path: Path, inputs) -> None:
    model = build_tiny_llava()
    model.save_pretrained(tmp_path / "base")
    adapters = inject_adapters(model, ATTN)
    adapters.add_slot("s", r=4, alpha=8, seed=0, layers=r".*layers\.0\..*")
    adapters.add_slot("s", r=2, alpha=3, seed=1, layers=r".*layers\.1\..*")
    perturb(adapters, "s")
    save_adapters(adapters, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(_load_base(tmp_path / "base"), tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), atol=1e-5, rtol=0)
    assert not any(isinstance(m, LoRALinear) for m in loaded.modules())
