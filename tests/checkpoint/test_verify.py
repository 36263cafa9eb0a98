"""The one check before a task checkpoint is used: files, hashes, core files listed, headers, identity."""

from __future__ import annotations

import json

import pytest

from prism.checkpoint import store
from prism.checkpoint.tensorfile import TensorFileError, read_header
from prism.errors import CheckpointError
from tests.checkpoint.helpers import (checkpoint, corruption_params, edit_state, overwrite_weights,
                                      remanifest)


def test_a_trained_checkpoint_verifies(trained_project):
    folder = checkpoint(trained_project)
    assert store.verify_task_checkpoint(folder) == []
    assert store.verify_task_checkpoint(folder, hashes=False, adapters=True) == []
    info = store.require_verified(folder, method="ft_lora", backbone="llava")
    assert info.tasks_seen == ["colour", "shape_mc"]


def test_overwritten_weights_fail_the_hash_and_only_the_hash(run_copy):
    folder = checkpoint(run_copy)
    overwrite_weights(folder)
    assert store.verify_task_checkpoint(folder) == ["adapter_model.safetensors: sha256 does not match the manifest"]
    assert store.verify_task_checkpoint(folder, hashes=False) == []  # what --no-verify gives up


def test_an_emptied_manifest_does_not_verify(run_copy):
    folder = checkpoint(run_copy)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"format": "prism-checkpoint/1", "files": {}}))
    assert store.verify_checkpoint(folder) == []  # the plain manifest check has nothing to compare
    problems = store.verify_task_checkpoint(folder, hashes=False)
    for name in ("prism_state.json", "adapter_model.safetensors", "adapter_config.json"):
        assert f"{name}: in the folder but not listed in the manifest (never verified)" in problems
    with pytest.raises(CheckpointError, match="does not verify: prism_state.json"):
        store.require_verified(folder)


def test_every_core_file_must_be_listed(run_copy):
    folder = checkpoint(run_copy)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]["adapter_config.json"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert store.verify_task_checkpoint(folder) == [
        "adapter_config.json: in the folder but not listed in the manifest (never verified)"]
    (folder / "adapter_config.json").unlink()  # gone altogether: prism_state.json records adapters
    assert store.verify_task_checkpoint(folder) == ["adapter_config.json: missing, and not listed in the manifest"]


def test_the_method_state_tensors_must_be_there_when_the_state_says_so(run_copy):
    folder = checkpoint(run_copy)
    edit_state(folder, has_state_tensors=True)
    remanifest(folder)
    assert store.verify_task_checkpoint(folder) == [
        "prism_state.safetensors: missing, and not listed in the manifest"]


def test_a_method_with_adapters_needs_them(run_copy):
    folder = checkpoint(run_copy)
    edit_state(folder, adapters={})
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (folder / name).unlink()
    remanifest(folder)
    assert store.verify_task_checkpoint(folder) == []  # nothing says it had adapters
    assert store.verify_task_checkpoint(folder, adapters=True) == [
        "adapter_model.safetensors: missing, and not listed in the manifest",
        "adapter_config.json: missing, and not listed in the manifest"]


@pytest.mark.parametrize(("key", "value"), [("method", "ewc"), ("backbone", "internvl")])
def test_another_method_or_backbone_is_refused(run_copy, key, value):
    folder = checkpoint(run_copy)
    edit_state(folder, **{key: value})
    remanifest(folder)
    with pytest.raises(CheckpointError) as error:
        store.require_verified(folder, method="ft_lora", backbone="llava")
    expected = {"method": "ft_lora", "backbone": "llava"}[key]
    assert (f"{folder / 'prism_state.json'} names {key} {value!r}, but this run's {key} is {expected!r}"
            in error.value.message)


@pytest.mark.parametrize(("file", "corrupt"), corruption_params())
def test_each_corruption_names_its_file(run_copy, file, corrupt):
    folder = checkpoint(run_copy)
    corrupt(folder / file)
    for hashes in (True, False):
        problems = store.verify_task_checkpoint(folder, hashes=hashes)
        assert problems and problems[0].startswith(f"{file}: "), problems
    with pytest.raises(CheckpointError, match=f"checkpoint .* does not verify: {file}: "):
        store.require_verified(folder, hashes=False)


@pytest.mark.parametrize(("file", "corrupt"), [p for p in corruption_params() if p.values[0] != "manifest.json"])
def test_a_manifest_regenerated_over_a_corrupt_file_does_not_hide_it(run_copy, file, corrupt):
    """Sizes and hashes then match: the file itself must still parse."""
    folder = checkpoint(run_copy)
    corrupt(folder / file)
    remanifest(folder)
    problems = store.verify_task_checkpoint(folder)
    assert len(problems) == 1 and problems[0].startswith(f"{file}: "), problems
    assert "manifest" not in problems[0]


@pytest.mark.parametrize("file", ["prism_state.json", "adapter_config.json"])
def test_json_core_files_must_be_objects(run_copy, file):
    folder = checkpoint(run_copy)
    (folder / file).write_text("[]")
    remanifest(folder)
    assert store.verify_task_checkpoint(folder) == [f"{file}: not a JSON object"]


def test_a_manifest_entry_outside_the_folder_is_a_problem(run_copy):
    folder = checkpoint(run_copy)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["../Task0_llava/adapter_model.safetensors"] = {"sha256": "0", "bytes": 1}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert store.verify_checkpoint(folder) == [
        "../Task0_llava/adapter_model.safetensors: the manifest names a file outside the checkpoint"]


def test_the_header_length_is_bounded_by_the_file(tmp_path):
    """A length field of 2**60 is an error about the file, not an attempt to read 2**60 bytes."""
    path = tmp_path / "huge.safetensors"
    path.write_bytes((1 << 60).to_bytes(8, "little") + b"{}")
    with pytest.raises(TensorFileError, match="does not fit the file's 10 bytes"):
        read_header(path)
    path.write_bytes((2).to_bytes(8, "little") + b"{}" + b"\0" * 4)
    with pytest.raises(TensorFileError, match="describes 0 bytes of tensor data, the file holds 4"):
        read_header(path)
