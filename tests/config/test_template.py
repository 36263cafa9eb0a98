"""The repository's prism.toml is the `prism init` template, documented and valid."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

from prism.config import PrismConfig, default_toml_text, load_config
from prism.config.schema import MethodConfig

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "src" / "prism" / "config" / "default_prism.toml"


def test_repo_file_equals_the_packaged_template():
    assert (REPO / "prism.toml").read_text(encoding="utf-8") == default_toml_text()
    assert TEMPLATE.read_text(encoding="utf-8") == default_toml_text()


def test_template_is_shipped_in_the_wheel():
    """setuptools only packages non-Python files listed in package-data."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"].get("package-data", {}).get("prism", [])
    relative = TEMPLATE.relative_to(REPO / "src" / "prism").as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), (
        f"add 'config/*.toml' to [tool.setuptools.package-data] prism (has {patterns})")


def test_repo_prism_toml_validates_with_the_demo_values(methods):
    resolved = load_config(REPO / "prism.toml", env={})
    cfg = resolved.config
    assert (cfg.backbone.id, cfg.backbone.model, cfg.backbone.train_precision) == \
        ("llava", "builtin:tiny-llava", "fp32")
    assert (cfg.benchmark.id, cfg.benchmark.root, cfg.benchmark.tasks) == ("synthetic", "data/synthetic", None)
    assert cfg.method.id == "ft_lora"
    assert resolved.method_params.model_dump() == {"r": 8, "alpha": 16.0, "dropout": 0.05,
                                                   "target_modules": "attn_and_ffn"}
    train = cfg.train
    assert (train.lr, train.max_steps, train.global_batch_size, train.lr_scheduler) == (1e-3, 300, 16, "cosine")
    assert (train.warmup_ratio, train.weight_decay, train.max_grad_norm) == (0.03, 0.0, 1.0)
    assert cfg.infer.batch_size == 64
    assert all(source.startswith("prism.toml:") or source == "default" for source in resolved.sources.values())


def test_repo_prism_toml_validates_with_the_real_ft_lora():
    if importlib.util.find_spec("prism.methods.ft_lora") is None:
        pytest.skip("prism.methods.ft_lora is not written yet")
    resolved = load_config(REPO / "prism.toml", env={})
    assert resolved.method_params.r == 8 and resolved.method_params.target_modules == "attn_and_ffn"


def _tables(text: str) -> dict[str, list[str]]:
    """Lines of the template by table header."""
    tables: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        header = re.match(r"^\[([^\]]+)\]", line)
        if header:
            current = header.group(1)
            tables[current] = []
        else:
            tables[current].append(line)
    return tables


@pytest.mark.parametrize("table", [name for name in PrismConfig.model_fields if name != "method"])
def test_every_key_is_documented(table):
    lines = _tables(default_toml_text())[table]
    model = PrismConfig.model_fields[table].annotation
    for key in model.model_fields:
        pattern = re.compile(rf"^(# )?{key} = ")
        index = next((i for i, line in enumerate(lines) if pattern.match(line)), None)
        assert index is not None, f"[{table}] {key} is missing from the template"
        above = lines[index - 1] if index else ""
        assert above.startswith("#"), f"[{table}] {key} has no comment above it"
    assert any(line.startswith("# ") for line in lines)


def test_method_table_documented():
    tables = _tables(default_toml_text())
    assert any(re.match(r"^id = ", line) for line in tables["method"])
    assert list(MethodConfig.model_fields) == ["id"]
    assert set(tables) == {"", "project", "backbone", "benchmark", "method", "method.ft_lora", "method.ewc", "train",
                           "infer", "distributed", "plugins"}
