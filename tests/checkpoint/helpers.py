"""Corrupting a checkpoint the ways disks, kills and people do, and running the CLI in this process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

CHECKPOINTS = Path("outputs/checkpoints/synthetic/ft_lora")


def checkpoint(project: Path, task: int = 1) -> Path:
    return project / CHECKPOINTS / f"Task{task}_llava"


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file's bytes under ``folders`` (to show that a failing command changed nothing)."""
    return {str(p): p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def outputs_snapshot(project: Path) -> dict[str, bytes]:
    out = project / "outputs"
    return snapshot(out / "predictions", out / "results", out / "checkpoints")


def remanifest(folder: Path) -> None:
    """Rewrite manifest.json to match the files as they are now (a forged or regenerated manifest)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "manifest.json":
            files[str(path.relative_to(folder))] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                                    "bytes": path.stat().st_size}
    (folder / "manifest.json").write_text(json.dumps({"format": "prism-checkpoint/1", "files": files}))


def overwrite_weights(folder: Path) -> None:
    """Every adapter weight replaced by other values: same tensors, same size, the manifest untouched."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = folder / "adapter_model.safetensors"
    size = path.stat().st_size
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        tensors = {key: torch.full_like(handle.get_tensor(key), 0.5) for key in handle.keys()}
    save_file(tensors, str(path), metadata=metadata)
    assert path.stat().st_size == size


def edit_state(folder: Path, **changes) -> None:
    state_path = folder / "prism_state.json"
    state = json.loads(state_path.read_text())
    state.update(changes)
    state_path.write_text(json.dumps(state, indent=2))


def cut_header(path: Path) -> None:
    """The file cut inside its safetensors header."""
    path.write_bytes(path.read_bytes()[:40])


def flip_header_byte(path: Path) -> None:
    """One bit of the header-length field flipped: the length no longer fits the file."""
    data = bytearray(path.read_bytes())
    data[5] ^= 0x01
    path.write_bytes(bytes(data))


def flip_json_byte(path: Path) -> None:
    """One bit flipped inside the header's JSON (the first key loses its meaning)."""
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.write_bytes(bytes(data))


def pickle_instead(path: Path) -> None:
    """torch.save output where safetensors is expected."""
    import torch

    torch.save({"weight": torch.zeros(4)}, path)


def invalid_json(path: Path) -> None:
    path.write_text(path.read_text()[:-7])


def not_utf8(path: Path) -> None:
    path.write_bytes(b"\xff\xfe" + path.read_bytes())


#: (name, file, how): corruptions that must each give one CheckpointError naming the file
CORRUPTIONS = [
    ("cut-adapter-header", "adapter_model.safetensors", cut_header),
    ("flipped-adapter-header-byte", "adapter_model.safetensors", flip_header_byte),
    ("flipped-byte-in-adapter-header-json", "adapter_model.safetensors", flip_json_byte),
    ("pickled-adapter", "adapter_model.safetensors", pickle_instead),
    ("invalid-json-manifest", "manifest.json", invalid_json),
    ("invalid-json-state", "prism_state.json", invalid_json),
    ("invalid-json-adapter-config", "adapter_config.json", invalid_json),
    ("non-utf8-manifest", "manifest.json", not_utf8),
    ("non-utf8-state", "prism_state.json", not_utf8),
    ("non-utf8-adapter-config", "adapter_config.json", not_utf8),
]


def corruption_params():
    return [pytest.param(file, how, id=name) for name, file, how in CORRUPTIONS]


class Cli:
    """`prism ARGS` in this process (torch is imported already): exit code, stdout, stderr."""

    def __init__(self, monkeypatch, capsys):
        self.monkeypatch, self.capsys = monkeypatch, capsys
        monkeypatch.setenv("COLUMNS", "2000")  # rich wraps long paths at the terminal width

    def __call__(self, args: list[str], cwd: Path) -> tuple[int, str, str]:
        from prism.cli.app import main

        self.capsys.readouterr()
        with self.monkeypatch.context() as patch:
            patch.chdir(cwd)
            with pytest.raises(SystemExit) as exited:
                main(args)
        out, err = self.capsys.readouterr()
        return exited.value.code, out, " ".join(err.split())
