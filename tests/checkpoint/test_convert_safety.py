"""`prism ckpt convert` never deletes its source, cleans up after killed runs, and unpickles nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.backbones.test_llava_original import original  # noqa: F401  (the tiny original-format release)
from tests.checkpoint.helpers import cut_header, snapshot


@pytest.fixture
def release(original, tmp_path) -> Path:  # noqa: F811
    """A copy of the tiny release in ``models/``, its tower named by absolute path."""
    folder = tmp_path / "models" / "llava-v1.5-tiny"
    shutil.copytree(original.ckpt, folder)
    config = json.loads((folder / "config.json").read_text())
    config["mm_vision_tower"] = str(original.tower)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _destinations(release: Path) -> dict[str, Path]:
    link = release.parent.parent / "link-to-models"
    link.symlink_to(release.parent, target_is_directory=True)
    return {"parent": release.parent, "same": release, "inside": release / "hf", "symlinked-parent": link,
            "relative-parent": Path(os.path.relpath(release.parent, release.parent.parent))}


@pytest.mark.parametrize("where", ["parent", "same", "inside", "symlinked-parent", "relative-parent"])
def test_a_destination_holding_or_inside_the_source_is_refused(release, cli, where):
    dst = _destinations(release)[where]
    before = snapshot(release.parent.parent)
    code, _, err = cli(["ckpt", "convert", str(release), str(dst), "--force", "--dtype", "float32"],
                       release.parent.parent)
    assert code == 2, err
    relation = {"parent": "contains", "same": "is", "inside": "is inside", "symlinked-parent": "contains",
                "relative-parent": "contains"}[where]
    assert f"the output folder {dst} {relation} the source {release}" in err
    assert snapshot(release.parent.parent) == before  # nothing touched, the source least of all
    assert sorted(p.name for p in release.parent.parent.iterdir()) == ["link-to-models", "models"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_killed_conversions_leave_nothing_behind_running_ones_are_left_alone(release, cli, tmp_path):
    dst = tmp_path / "out" / "llava-hf"
    dst.parent.mkdir()
    dead = _dead_pid()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = [dst.parent / f".llava-hf.tmp-{dead}", dst.parent / f".llava-hf.tmp-{dead}-1712345678"]
        kept = [dst.parent / f".llava-hf.tmp-{running.pid}-1712345678",  # another convert at work
                dst.parent / f".other.tmp-{dead}", dst.parent / ".llava-hf.tmp-notapid"]
        for folder in stale + kept:
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"half written")
        code, _, err = cli(["ckpt", "convert", str(release), str(dst), "--dtype", "float32"], tmp_path)
        assert code == 0, str(err)
        assert sorted(p.name for p in dst.parent.iterdir()) == sorted([dst.name] + [p.name for p in kept])
        assert (dst / "model.safetensors").is_file()
    finally:
        running.kill()
        running.wait()


def _as_bin_release(release: Path, state: dict, evil: Path) -> None:
    """The release as it is published: torch.save .bin shards (one with a pickle that runs code)."""
    import torch

    for path in release.glob("*.safetensors"):
        path.unlink()
    (release / "model.safetensors.index.json").unlink()
    first = {k: v for k, v in state.items() if "layers.1." not in k}
    second = {k: v for k, v in state.items() if "layers.1." in k}
    torch.save(first, release / "pytorch_model-00001-of-00002.bin")
    torch.save({**second, "payload": _Evil(evil)}, release / "pytorch_model-00002-of-00002.bin")
    weight_map = {**{k: "pytorch_model-00001-of-00002.bin" for k in first},
                  **{k: "pytorch_model-00002-of-00002.bin" for k in second}}
    (release / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


class _Evil:
    """Unpickling this writes a file: the proof that nothing was unpickled is that the file is absent."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_bin_shards_are_refused_unread(release, original, cli, tmp_path, monkeypatch):  # noqa: F811
    import torch

    from prism.backbones.llava import LlavaBackbone
    from prism.errors import CheckpointError

    marker = tmp_path / "unpickled.txt"
    state = {k: v for k, v in original.state.items()}
    _as_bin_release(release, state, marker)
    with monkeypatch.context() as patch:
        patch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
        code, _, err = cli(["ckpt", "convert", str(release), str(tmp_path / "hf")], tmp_path)
        assert code == 1
        shard = release / "pytorch_model-00001-of-00002.bin"
        assert f"{shard} is a torch .bin shard (a zip archive (torch.save's format)); prism reads safetensors " \
               "weights only and never unpickles them" in err
        with pytest.raises(CheckpointError, match="never unpickles"):  # loading it as a backbone: the same
            LlavaBackbone().load(SimpleNamespace(id="llava", model=str(release), attn="auto",
                                                 train_precision="fp32"))
    assert not marker.exists() and not (tmp_path / "hf").exists()

    # the hint's command, run by the user once (on the payload-free shards), makes the folder usable
    torch.save({k: v for k, v in state.items() if "layers.1." in k}, release / "pytorch_model-00002-of-00002.bin")
    command = err.split('python -c "', 1)[1].split('" (model.safetensors', 1)[0]
    subprocess.run([sys.executable, "-c", command], check=True, timeout=300)
    code, _, err = cli(["ckpt", "convert", str(release), str(tmp_path / "hf"), "--dtype", "float32"], tmp_path)
    assert code == 0, str(err)
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_a_corrupt_safetensors_shard_is_named(release, cli, tmp_path):
    shard = release / "model-00002-of-00002.safetensors"
    cut_header(shard)
    code, _, err = cli(["ckpt", "convert", str(release), str(tmp_path / "hf")], tmp_path)
    assert code == 1
    assert f"{shard}: not a safetensors file: its header length" in err and "do not verify" in err
    assert not (tmp_path / "hf").exists()
