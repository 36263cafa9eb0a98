"""Train and infer precision: what this machine can use, clear errors, loading and a training step.

The bitsandbytes tests run only where it is importable (a separate venv with
``pip install -e ".[test,quant]"``): importing peft with it installed is slow.
"""

from __future__ import annotations

import importlib.util
import random
from types import SimpleNamespace

import pytest
import torch

from prism.backbones import precision
from prism.backbones.base import TARGET_PRESETS
from prism.backbones.llava import LlavaBackbone
from prism.backbones.precision import (QUANT_INSTALL, available_precisions, check_precision, load_kwargs,
                                       mixed_precision, resolve_infer_precision)
from prism.benchmarks import synthetic as syn
from prism.errors import ConfigError

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
needs_bnb = pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed (pip install 'prism-mcit[quant]')")


def _cfg(train_precision: str = "fp32") -> SimpleNamespace:
    return SimpleNamespace(id="llava", model="builtin:tiny-llava", attn="auto", train_precision=train_precision)


def _inputs(backbone, n: int = 2) -> dict[str, torch.Tensor]:
    """A real prompt + answer through the backbone's own processor."""
    rng = random.Random(0)
    images = [syn.render_scene(syn.random_scene(rng, 2)) for _ in range(n)]
    text = ["USER: <image>\nDescribe the image. ASSISTANT: there are two shapes"] * n
    inputs = dict(backbone.extra["processor"](images=images, text=text, return_tensors="pt"))
    inputs["labels"] = inputs["input_ids"].clone()
    return inputs


@pytest.fixture(scope="module")
def fp32():
    return LlavaBackbone().load(_cfg("fp32"))


@pytest.fixture(scope="module")
def fp32_logits(fp32):
    with torch.no_grad():
        return fp32.model(**_inputs(fp32)).logits


# -- what is available, and the errors -----------------------------------------------------------
def test_available_on_cpu():
    found = available_precisions("cpu")
    assert list(found) == ["fp32", "bf16", "fp16", "8bit", "4bit"]
    assert found["fp32"] is None and found["bf16"] is None
    assert found["fp16"] == "needs a CUDA GPU"
    assert found["8bit"] == found["4bit"] == (None if HAS_BNB else QUANT_INSTALL)
    assert "prism-mcit[quant]" in QUANT_INSTALL


def test_fp16_on_cpu_is_a_config_error_with_a_hint():
    with pytest.raises(ConfigError) as info:
        check_precision("fp16", "cpu", "[backbone] train_precision")
    assert info.value.exit_code == 2
    assert str(info.value).startswith('[backbone] train_precision = "fp16" needs a CUDA GPU')
    assert '"bf16"' in info.value.hint and '"fp32"' in info.value.hint
    with pytest.raises(ConfigError, match="^--train-precision fp16 needs a CUDA GPU"):
        check_precision("fp16", "cpu", "--train-precision")
    with pytest.raises(ConfigError, match="expected one of fp32, bf16, fp16, 8bit, 4bit"):
        check_precision("int3", "cpu", "[infer] precision")
    check_precision("bf16", "cpu", "[backbone] train_precision")  # usable: no error


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_quantised_without_bitsandbytes_says_what_to_install(mode, monkeypatch):
    monkeypatch.setattr(precision, "bitsandbytes_installed", lambda: False)
    with pytest.raises(ConfigError) as info:
        check_precision(mode, "cpu", "[infer] precision")
    assert f'[infer] precision = "{mode}" needs bitsandbytes' in str(info.value)
    assert "pip install 'prism-mcit[quant]'" in info.value.hint
    with pytest.raises(ConfigError, match="prism-mcit\\[quant\\]"):
        load_kwargs(mode, "cpu")  # a direct LlavaBackbone.load call fails just as clearly
    with pytest.raises(ConfigError, match="prism-mcit\\[quant\\]"):
        LlavaBackbone().load(_cfg(mode))


def test_load_kwargs_and_mixed_precision():
    assert load_kwargs("fp32", "cpu") == {"dtype": torch.float32}
    assert load_kwargs("bf16", "cpu") == {"dtype": torch.bfloat16}
    assert (mixed_precision("fp32", "cpu"), mixed_precision("bf16", "cpu")) == ("no", "bf16")
    if HAS_BNB:
        eight = load_kwargs("8bit", "cpu")
        config = eight["quantization_config"]
        assert config.load_in_8bit and "model.vision_tower" in config.llm_int8_skip_modules
        assert "model.multi_modal_projector" in config.llm_int8_skip_modules
        assert "device_map" not in eight  # CPU: no GPU to place it on
        four = load_kwargs("4bit", "cpu")["quantization_config"]
        assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4"
    with pytest.raises(ConfigError):
        load_kwargs("fp64", "cpu")


def test_models_built_in_memory_are_cast_or_refused():
    """An original-format LLaVA is converted in memory: float modes cast it, quantised ones cannot."""
    from prism.backbones.precision import in_memory_precision

    layer = torch.nn.Linear(4, 4)
    assert in_memory_precision(layer, "fp32", "llava-v1.5-7b") is layer
    assert in_memory_precision(layer, "bf16", "llava-v1.5-7b").weight.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="original-format") as info:
        in_memory_precision(torch.nn.Linear(4, 4), "4bit", "llava-v1.5-7b")
    assert "prism ckpt convert" in info.value.hint


def test_infer_auto_means_as_trained():
    assert resolve_infer_precision("auto", "bf16") == "bf16"
    assert resolve_infer_precision("fp32", "bf16") == "fp32"


# -- CPU: fp32 and bf16 load, train a step, generate ----------------------------------------------
def _train_step(backbone, mode: str) -> tuple[float, dict[str, torch.Tensor]]:
    """One LoRA step through accelerate with the mode's mixed precision, as the engine runs it."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from prism.adapters import inject_adapters

    AcceleratorState._reset_state(True)  # one process, two precisions: accelerate keeps a singleton

    adapters = inject_adapters(backbone.model, TARGET_PRESETS["attn"])
    adapters.add_slot("task0", r=4, alpha=8, seed=0)
    adapters.set_trainable(["task0"])
    adapters.activate(["task0"])
    params = [p for p in backbone.model.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params)  # fp32 masters for what trains
    accelerator = Accelerator(mixed_precision=mixed_precision(mode, "cpu"), cpu=True)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    try:
        model, optimizer = accelerator.prepare(backbone.model, optimizer)
        model.train()
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        loss = model(**_inputs(backbone)).loss
        accelerator.backward(loss)
        optimizer.step()
        model.eval()
    finally:
        AcceleratorState._reset_state(True)  # leave no bf16 state behind for the engine's tests
    return float(loss.detach()), before


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_cpu_precisions_load_train_and_generate(mode, fp32_logits):
    backbone = LlavaBackbone().load(_cfg(mode))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[mode]
    assert backbone.model.model.language_model.layers[0].self_attn.q_proj.weight.dtype == dtype
    assert backbone.model.model.vision_tower.encoder.layers[0].mlp.fc1.weight.dtype == dtype
    with torch.no_grad():
        logits = backbone.model(**_inputs(backbone)).logits.float()
    assert (logits - fp32_logits).abs().mean() < (1e-5 if mode == "fp32" else 0.05)
    loss, before = _train_step(backbone, mode)
    assert loss == loss and 0 < loss < 20  # finite
    changed = [n for n, p in backbone.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert changed and all("lora_" in n for n in changed)
    # evaluation after each task runs on the same model (prism train evaluates with what it trains)
    inputs = _inputs(backbone, 1)
    out = backbone.model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                  pixel_values=inputs["pixel_values"].to(dtype), max_new_tokens=3, do_sample=False)
    assert inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 3


def test_explicit_precision_argument_overrides_the_config():
    backbone = LlavaBackbone().load(_cfg("fp32"), precision="bf16")
    assert next(backbone.model.parameters()).dtype == torch.bfloat16


# -- the engine: which precision for which purpose, checked before loading -------------------------
def test_session_picks_the_precision_and_names_its_source(project):
    from prism.config import load_config
    from prism.engine.session import load_backbone, plan_run, precision_for

    resolved = load_config(cwd=project, env={}, sets=["infer.precision='bf16'"])
    assert precision_for(resolved, "train") == ("fp32", "[backbone] train_precision")
    assert precision_for(resolved, "infer") == ("bf16", "[infer] precision")
    flagged = load_config(cwd=project, env={}, flags={"backbone.train_precision": "fp16"})
    assert precision_for(flagged, "train") == ("fp16", "--train-precision")
    mode, key = precision_for(flagged, "infer")  # infer precision "auto": as trained
    assert mode == "fp16" and key.startswith("--train-precision") and '"auto"' in key
    with pytest.raises(ConfigError, match="^--train-precision fp16 needs a CUDA GPU"):
        load_backbone(plan_run(flagged))
    loaded = load_backbone(plan_run(resolved), purpose="infer")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16 and loaded.extra["precision"] == "bf16"
    assert loaded.extra["routing_tower"] is None


def test_infer_precision_does_not_change_the_run_fingerprint(project):
    from prism.config import load_config

    plain = load_config(cwd=project, env={})
    other = load_config(cwd=project, env={}, sets=["infer.precision='bf16'"])
    trained = load_config(cwd=project, env={}, sets=["backbone.train_precision='bf16'"])
    assert plain.hash() == other.hash() != trained.hash()


def test_cli_flags_reach_the_config(project):
    from tests.conftest import run_cli

    result = run_cli(["train", "--train-precision", "fp16", "--tasks", "0"], cwd=project)
    assert result.code == 2, result
    assert "--train-precision fp16 needs a CUDA GPU" in result.stderr
    result = run_cli(["infer", "--load-8bit", "--load-4bit"], cwd=project)
    assert result.code == 2 and "different precisions" in result.stderr, result
    result = run_cli(["config", "show", "--set", "infer.precision='4bit'", "--json"], cwd=project)
    assert result.code == 0 and '"4bit"' in result.stdout, result


def test_prism_train_runs_in_bf16_on_cpu(project):
    """The engine's accelerate set-up (bf16 autocast on a CPU) trains, evaluates and saves."""
    import json

    from tests.conftest import run_cli

    result = run_cli(["train", "--tasks", "0", "--train-precision", "bf16", "--set", "train.max_steps=2",
                      "--set", "benchmark.max_train_samples=32", "--set", "benchmark.max_test_samples=4",
                      "--json"], cwd=project)
    assert result.code == 0, str(result)
    results = project / "outputs" / "results" / "synthetic" / "ft_lora"
    logged = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in logged if "loss" in row]
    assert losses and all(0 < loss < 50 for loss in losses)
    assert 'train_precision = "bf16"' in (results / "config.resolved.toml").read_text()


def test_infer_flag_shorthands():
    from prism.cli.infer_cmd import precision_flag

    assert precision_flag(None, False, False) is None
    assert precision_flag(None, True, False) == "8bit" and precision_flag(None, False, True) == "4bit"
    assert precision_flag("8bit", True, False) == "8bit"
    with pytest.raises(Exception, match="different precisions"):
        precision_flag("bf16", False, True)


# -- bitsandbytes -------------------------------------------------------------------------------
@needs_bnb
@pytest.mark.parametrize("mode, mean_tol, max_tol", [("8bit", 0.05, 2.0), ("4bit", 0.25, 5.0)])
def test_quantised_language_model_only(mode, mean_tol, max_tol, fp32_logits):
    import bitsandbytes as bnb

    quantised_types = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    backbone = LlavaBackbone().load(_cfg(mode))
    model = backbone.model
    llm = [m for n, m in model.named_modules() if n.startswith("model.language_model.layers.")
           and isinstance(m, torch.nn.Linear)]
    assert llm and all(isinstance(m, quantised_types) for m in llm)
    for prefix in ("model.vision_tower.", "model.multi_modal_projector.", "lm_head"):
        kept = [m for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, torch.nn.Linear)]
        assert kept and not any(isinstance(m, quantised_types) for m in kept), prefix
        assert all(m.weight.dtype == torch.float32 for m in kept)  # unquantised: fp32 on a CPU
    with torch.no_grad():
        logits = model(**_inputs(backbone)).logits.float()
    diff = (logits - fp32_logits).abs()
    assert diff.mean() < mean_tol and diff.max() < max_tol  # measured: 0.012/0.41 (8bit), 0.077/2.2 (4bit)
    assert (logits.argmax(-1) == fp32_logits.argmax(-1)).float().mean() > 0.9


@needs_bnb
@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_lora_on_a_quantised_base_trains(mode):
    from prism.adapters import inject_adapters

    backbone = LlavaBackbone().load(_cfg(mode))
    adapters = inject_adapters(backbone.model, TARGET_PRESETS["attn_and_ffn"])
    adapters.add_slot("task0", r=4, alpha=8, seed=0)
    adapters.set_trainable(["task0"])
    adapters.activate(["task0"])
    backbone.model.train()
    loss = backbone.model(**_inputs(backbone)).loss
    loss.backward()
    grads = {n: p.grad for n, p in backbone.model.named_parameters() if "lora_" in n}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(float(g.abs().sum()) > 0 for n, g in grads.items() if "lora_B" in n)  # B starts at zero: A's are 0


def test_precision_completion_lists_modes_without_heavy_imports():
    import subprocess
    import sys

    probe = ("import sys; from types import SimpleNamespace as S; from prism.cli.completion import "
             "complete_precision as c; print([v for v, _ in c(S(info_name='infer', params={}), '')]); "
             "print([v for v, _ in c(S(info_name='train', params={}), '4')]); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120).stdout.split("\n")
    assert out[0] == "['auto', 'fp32', 'bf16', 'fp16', '8bit', '4bit']"
    assert out[1] == "['4bit']" and out[2] == "False"
