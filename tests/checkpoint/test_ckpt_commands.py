"""`prism ckpt inspect|list|verify` on sound, corrupted and moved checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.checkpoint.helpers import checkpoint, corruption_params, outputs_snapshot, overwrite_weights
from tests.conftest import run_cli

GENERIC = ("JSONDecodeError", "SafetensorError", "MemoryError", "UnicodeDecodeError", "Traceback")


def _one_clear_error(err: str, file: str) -> None:
    assert "error:" in err and "does not verify" in err and file in err, err
    assert not any(name in err for name in GENERIC), err


# -- inspect -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("file", "corrupt"), corruption_params())
@pytest.mark.parametrize("flags", [[], ["--no-verify"]], ids=["hashes", "no-hashes"])
def test_inspect_names_the_corrupted_file(run_copy, cli, file, corrupt, flags):
    corrupt(checkpoint(run_copy) / file)
    code, _, err = cli(["ckpt", "inspect", "Task1_llava", *flags], run_copy)
    assert code == 1
    _one_clear_error(err, file)


def test_inspect_json_reports_the_problem_and_exits_1(run_copy, cli):
    overwrite_weights(checkpoint(run_copy))
    code, out, err = cli(["ckpt", "inspect", "Task1_llava", "--json"], run_copy)
    assert code == 1
    report = json.loads(out)
    assert report["verified"] is False
    assert report["problems"] == ["adapter_model.safetensors: sha256 does not match the manifest"]
    assert "adapter_tensors" not in report  # a file with a problem is not read further
    _one_clear_error(err, "adapter_model.safetensors")


def test_inspect_takes_a_folder_outside_the_configured_output(trained_project, cli, tmp_path):
    elsewhere = tmp_path / "archive" / "Task1_llava"
    shutil.copytree(checkpoint(trained_project), elsewhere)
    empty = tmp_path / "other-project"
    empty.mkdir()
    (empty / "prism.toml").write_text((trained_project / "prism.toml").read_text())
    code, out, err = cli(["ckpt", "inspect", str(elsewhere), "--json"], empty)
    assert code == 0, str(err)
    report = json.loads(out)
    assert report["path"] == str(elsewhere) and report["verified"]
    assert report["state"]["tasks_seen"] == ["colour", "shape_mc"]
    code, _, err = cli(["ckpt", "inspect", str(tmp_path / "archive" / "Task9_llava")], empty)
    assert code == 1 and "no such folder" in err


# -- list ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("file", "corrupt"), corruption_params())
def test_list_shows_a_corrupted_checkpoint_and_the_rest(run_copy, cli, file, corrupt):
    corrupt(checkpoint(run_copy, 0) / file)
    code, out, err = cli(["ckpt", "list", "--json"], run_copy)
    assert code == 0, str(err)
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["Task1_llava"]["status"] == "ok" and rows["Task1_llava"]["tasks_seen"] == ["colour", "shape_mc"]
    assert rows["Task0_llava"]["status"] == "does not verify"
    assert rows["Task0_llava"]["problems"][0].startswith(f"{file}: ")
    code, _, err = cli(["ckpt", "list"], run_copy)
    assert code == 0 and "Task1_llava" in err and "does not verify" in err and f"Task0_llava: {file}: " in err


# -- verify --------------------------------------------------------------------------------------
def test_verify_every_checkpoint_of_the_run(trained_project, cli):
    code, out, err = cli(["ckpt", "verify", "--json"], trained_project)
    assert code == 0, str(err)
    reports = json.loads(out)
    assert [r["name"] for r in reports] == ["Task0_llava", "Task1_llava"]
    assert all(r["verified"] and r["problems"] == [] and r["files"] == 3 for r in reports)
    code, _, err = cli(["ckpt", "verify"], trained_project)
    assert code == 0 and err.count("verified") == 2


def test_verify_rehashes_and_names_each_bad_file(run_copy, cli):
    overwrite_weights(checkpoint(run_copy, 0))
    (checkpoint(run_copy, 1) / "adapter_config.json").write_text("{}")
    before = outputs_snapshot(run_copy)
    code, out, err = cli(["ckpt", "verify", "--json"], run_copy)
    assert code == 1
    reports = {r["name"]: r for r in json.loads(out)}
    assert reports["Task0_llava"]["problems"] == ["adapter_model.safetensors: sha256 does not match the manifest"]
    assert reports["Task1_llava"]["problems"][0].startswith("adapter_config.json: size 2 != ")
    assert "2 of 2 checkpoints do not verify" in err
    assert "Task0_llava (adapter_model.safetensors: sha256" in err and "Task1_llava (adapter_config.json" in err
    assert outputs_snapshot(run_copy) == before  # verifying never changes a checkpoint


def test_verify_names_and_paths(run_copy, cli, tmp_path):
    overwrite_weights(checkpoint(run_copy, 0))
    code, _, err = cli(["ckpt", "verify", "Task1_llava"], run_copy)
    assert code == 0, str(err)
    moved = tmp_path / "moved" / "Task0_llava"
    shutil.copytree(checkpoint(run_copy, 0), moved)
    code, out, err = cli(["ckpt", "verify", str(moved), "Task1_llava", "--json"], run_copy)
    assert code == 1
    assert [(r["path"], r["verified"]) for r in json.loads(out)] == [(str(moved), False),
                                                                   (str(checkpoint(run_copy, 1)), True)]
    assert f"1 of 2 checkpoints do not verify: {moved} (adapter_model.safetensors" in err
    code, _, err = cli(["ckpt", "verify", "Task7_llava"], run_copy)
    assert code == 1 and "no checkpoint named 'Task7_llava'" in err


def test_verify_in_a_real_process_without_checkpoints(tmp_path):
    (tmp_path / "prism.toml").write_text("")
    result = run_cli(["ckpt", "verify"], cwd=tmp_path, env={"COLUMNS": "2000"})
    assert result.code == 1 and "no checkpoints of synthetic/ft_lora" in result.stderr, result
    assert "Traceback" not in result.stderr
