"""Settings that name files or folders: relative ones are under the project folder (where prism.toml is)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["project_path", "under"]


def under(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def project_path(value: str | None, project_dir: Path) -> str | None:
    """A model or tower setting as a loader should read it: a relative path that exists under the
    project folder (where prism.toml is) becomes that path; ids and ``builtin:`` names pass through."""
    if not value:
        return None
    path = Path(value).expanduser()
    local = project_dir / path
    if not value.startswith("builtin:") and not path.is_absolute() and local.exists():
        return str(local)
    return value
