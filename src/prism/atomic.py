"""Writing files and folders atomically, so readers never see half of one.

A file is written to a hidden temporary sibling, fsynced and renamed over the
target (``write_file_atomic``); a folder is filled beside its final place and
renamed in (``replace_folder``). The temporary file is created like any other
file (mode 0666 less the umask), so the result is as readable as one written
with ``open(path, "w")``: ``tempfile.mkstemp`` would make it 0600.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

#: ``.<name>.tmp-<pid>[-<ns>]``: the temporary sibling a writer fills before the rename
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(?:-\d+)?$")


def write_file_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, newlines as given) to ``path``: a crash leaves the old file or the new.

    The folder is created when missing. Returns the path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp = temporary_sibling(target)
    try:
        with open(tmp, "xb") as handle:  # "x": a new file, permissions from the umask
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """``obj`` as indented UTF-8 JSON (anything else JSON lacks as its ``str``), written atomically."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"
    return write_file_atomic(path, text)


def normal_permissions(folder: Path) -> None:
    """Give every file under ``folder`` the mode ``open(path, "w")`` would (0666 less the umask).

    Some writers make their files 0600 (safetensors' ``save_file``, and with it
    ``save_pretrained``), which collaborators on a shared file system cannot read.
    """
    mask = os.umask(0)
    os.umask(mask)
    mode = 0o666 & ~mask
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and not path.stat().st_mode & 0o111:
            os.chmod(path, mode)


def replace_folder(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is set aside first and deleted after.

    Between the two renames a kill leaves the previous folder as ``.<name>.old-*``
    beside ``final`` (``prism.checkpoint.store.recover_interrupted`` puts it back).
    """
    normal_permissions(tmp)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def temporary_sibling(final: Path) -> Path:
    """Where to write ``final`` before ``replace_folder`` (or a file before its rename): a hidden
    sibling named after this process.

    The process id in the name lets a later run tell a killed writer's leftovers
    from the folder of a writer still running (``remove_stale_temporaries``).
    """
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{time.time_ns()}")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (True when that cannot be told: nothing is deleted then)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate it on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Delete the temporary siblings of ``final`` whose writer no longer runs (killed mid-write).

    A temporary folder of a live process (another writer at work) is left alone.
    Returns the folders removed.
    """
    removed = []
    if not final.parent.is_dir():
        return removed
    for path in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        match = _TEMPORARY.match(path.name)
        if match is None or match["name"] != final.name or not path.is_dir() or path.is_symlink():
            continue
        if not process_alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
