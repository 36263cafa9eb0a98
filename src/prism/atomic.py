"""Putting a fully written folder in place of another, so readers never see half of one."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


def replace_folder(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is set aside first and deleted after.

    Between the two renames a kill leaves the previous folder as ``.<name>.old-*``
    beside ``final`` (``prism.checkpoint.store.recover_interrupted`` puts it back).
    """
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
