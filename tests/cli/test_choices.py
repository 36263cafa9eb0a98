"""Precisions and dtypes are choices: the values the library accepts, offered by completion,
anything else a usage error (exit 2) naming the option and the choices."""

from __future__ import annotations

import os
import subprocess
import sys
import typing

import pytest

from prism.cli.options import InferPrecision, TrainPrecision, WeightDtype


def _values(choice) -> list[str]:
    return [member.value for member in choice]


def test_choices_are_what_the_schema_and_the_writers_accept():
    from prism.backbones.llava_original import DTYPES as CONVERT_DTYPES
    from prism.checkpoint.export import DTYPES as EXPORT_DTYPES
    from prism.config.schema import BackboneConfig, InferConfig

    assert _values(TrainPrecision) == list(typing.get_args(BackboneConfig.model_fields["train_precision"].annotation))
    assert _values(InferPrecision) == list(typing.get_args(InferConfig.model_fields["precision"].annotation))
    assert set(_values(WeightDtype)) == set(CONVERT_DTYPES) == set(EXPORT_DTYPES)


@pytest.mark.parametrize("args, option", [
    (["train", "--train-precision", "int3"], "--train-precision"),
    (["train", "--train-precision", "auto"], "--train-precision"),  # infer only
    (["infer", "--precision", "BF16"], "--precision"),
    (["ckpt", "convert", "src", "dst", "--dtype", "fp16"], "--dtype"),
    (["ckpt", "export", "Task0_llava", "--to", "out", "--dtype", "int8"], "--dtype"),
])
def test_a_value_outside_the_choices_is_a_usage_error(args, option, capsys, monkeypatch, tmp_path):
    from prism.cli.app import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as info:
        main(args)
    err = " ".join(capsys.readouterr().err.split())
    assert info.value.code == 2, err
    assert f"Invalid value for '{option}'" in err and f"'{args[-1]}' is not one of" in err
    assert not list(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize("line, expected", [
    ("prism train --train-precision ", ["fp32", "bf16", "fp16", "8bit", "4bit"]),
    ("prism infer --precision a", ["auto"]),
    ("prism ckpt convert a b --dtype ", ["auto", "float32", "float16", "bfloat16"]),
    ("prism ckpt export Task0_llava --dtype bf", ["bfloat16"]),
])
def test_completion_offers_the_choices(line, expected, tmp_path):
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    env = dict(os.environ, _PRISM_COMPLETE="complete_bash", COMP_WORDS=line, COMP_CWORD=str(cword))
    proc = subprocess.run([sys.executable, "-m", "prism"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120, check=False)
    assert proc.stdout.split() == expected, proc.stderr
