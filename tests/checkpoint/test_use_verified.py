"""`prism infer` and a resumed `prism train` verify a checkpoint before they use it."""

from __future__ import annotations

import json

import pytest

from prism.errors import CheckpointError
from tests.checkpoint.helpers import (checkpoint, cut_header, edit_state, invalid_json, not_utf8,
                                      outputs_snapshot, overwrite_weights, pickle_instead, remanifest)
from tests.conftest import run_cli


def _resume(project):
    from prism.config import load_config
    from prism.engine.loop import train

    return train(load_config(project / "prism.toml", cwd=project, env={}))


def _empty_manifest(folder):
    (folder / "manifest.json").write_text(json.dumps({"format": "prism-checkpoint/1", "files": {}}))


def test_infer_refuses_overwritten_weights_and_writes_nothing(run_copy):
    """Every weight overwritten, the manifest untouched: no predictions or matrix under its name."""
    overwrite_weights(checkpoint(run_copy, 1))
    before = outputs_snapshot(run_copy)
    result = run_cli(["infer"], cwd=run_copy, env={"COLUMNS": "2000"})
    assert result.code == 1, result
    err = " ".join(result.stderr.split())
    assert (f"checkpoint {checkpoint(run_copy, 1)} does not verify: adapter_model.safetensors: sha256 does not "
            "match the manifest") in err
    assert "prism ckpt verify" in err and "Traceback" not in err
    assert outputs_snapshot(run_copy) == before


@pytest.mark.parametrize("corrupt", [
    pytest.param(lambda f: overwrite_weights(f), id="overwritten-weights"),
    pytest.param(_empty_manifest, id="emptied-manifest"),
    pytest.param(lambda f: cut_header(f / "adapter_model.safetensors"), id="cut-header"),
    pytest.param(lambda f: pickle_instead(f / "adapter_model.safetensors"), id="pickle"),
    pytest.param(lambda f: invalid_json(f / "prism_state.json"), id="invalid-state-json"),
    pytest.param(lambda f: not_utf8(f / "manifest.json"), id="non-utf8-manifest"),
])
def test_infer_verifies_every_checkpoint_first(run_copy, cli, corrupt):
    corrupt(checkpoint(run_copy, 0))
    before = outputs_snapshot(run_copy)
    code, _, err = cli(["infer"], run_copy)
    assert code == 1
    assert f"checkpoint {checkpoint(run_copy, 0)} does not verify: " in err, err
    assert outputs_snapshot(run_copy) == before


def test_infer_refuses_another_methods_checkpoint(run_copy, cli):
    folder = checkpoint(run_copy, 1)
    edit_state(folder, method="ewc")
    remanifest(folder)  # a consistent folder: only its identity is wrong
    before = outputs_snapshot(run_copy)
    code, _, err = cli(["infer", "--ckpt", "Task1_llava"], run_copy)
    assert code == 1
    assert f"{folder / 'prism_state.json'} names method 'ewc', but this run's method is 'ft_lora'" in err
    assert outputs_snapshot(run_copy) == before


def test_no_verify_still_checks_sizes_and_the_listing(run_copy, cli):
    cut_header(checkpoint(run_copy, 0) / "adapter_model.safetensors")
    code, _, err = cli(["infer", "--no-verify"], run_copy)
    assert code == 1 and "adapter_model.safetensors: size 40 != " in err
    _empty_manifest(checkpoint(run_copy, 1))
    code, _, err = cli(["infer", "--no-verify", "--ckpt", "Task1_llava"], run_copy)
    assert code == 1 and "prism_state.json: in the folder but not listed in the manifest" in err


def test_no_verify_runs_without_hashing(run_copy, cli, monkeypatch):
    from prism.checkpoint import store

    expected = json.loads((run_copy / "outputs/results/synthetic/ft_lora/accuracy_matrix.json").read_text())
    real = store.sha256_file

    def only_the_manifest(path, *args):  # whose hash names the predictions (their model_id)
        assert path.name == "manifest.json", f"--no-verify hashed {path}"
        return real(path, *args)

    monkeypatch.setattr(store, "sha256_file", only_the_manifest)
    code, out, err = cli(["infer", "--no-verify", "--json"], run_copy)
    assert code == 0, str(err)
    assert json.loads(out)["matrix"] == expected["matrix"]


@pytest.mark.parametrize("corrupt", [
    pytest.param(_empty_manifest, id="emptied-manifest"),
    pytest.param(lambda f: invalid_json(f / "manifest.json"), id="invalid-manifest-json"),
    pytest.param(lambda f: not_utf8(f / "prism_state.json"), id="non-utf8-state"),
    pytest.param(lambda f: (edit_state(f, backbone="internvl"), remanifest(f)), id="other-backbone"),
])
def test_resume_verifies_the_finished_tasks(run_copy, corrupt):
    corrupt(checkpoint(run_copy, 1))
    before = outputs_snapshot(run_copy)
    with pytest.raises(CheckpointError) as error:
        _resume(run_copy)
    assert str(checkpoint(run_copy, 1)) in error.value.message
    assert outputs_snapshot(run_copy) == before


def test_resume_evaluates_the_last_row_from_a_verified_checkpoint(run_copy):
    """The matrix row of the last finished task, missing, is filled from the restored checkpoint."""
    results = run_copy / "outputs/results/synthetic/ft_lora"
    expected = json.loads((results / "accuracy_matrix.json").read_text())
    (results / "accuracy_matrix.json").unlink()
    outcome = _resume(run_copy)
    assert outcome.trained == [] and outcome.skipped == ["colour", "shape_mc"]
    assert outcome.matrix.to_list()[1] == expected["matrix"][1]
