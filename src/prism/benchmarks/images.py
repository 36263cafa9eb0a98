"""A record's image: where its file is (never outside the image folder), and opening it.

Torch-free: the check and the loaders share these, so they report the same problems.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prism.benchmarks.base import TaskSpec
from prism.benchmarks.image_manifest import ImageVerifier
from prism.errors import DataError

if TYPE_CHECKING:
    import torch
    from PIL import Image

def resolve_image(root: Path, task: TaskSpec, relpath: str) -> Path:
    """The file ``root/image_root/relpath`` really is; one outside that folder is a DataError.

    The one confinement check of image paths (``prism data check``, training and
    evaluation all use it). Both the image root and the path are resolved,
    symlinks included, before the check: an image root that is itself a link
    to shared storage works, a file linking to another file of the folder
    works, but an image whose link leads out of the folder does not.
    """
    base = os.path.realpath(os.path.join(os.fspath(root), task.image_root))
    if os.path.isabs(relpath):
        raise DataError(f"image path {relpath!r} of task {task.name!r} is absolute; "
                        f"image paths must be relative to {base}")
    full = os.path.realpath(os.path.join(base, relpath))
    if not _inside(full, base):
        if _inside(os.path.normpath(os.path.join(base, relpath)), base):
            raise DataError(f"image path {relpath!r} of task {task.name!r} leads through a symlink to "
                            f"{full}, outside the image root {base}")
        raise DataError(f"image path {relpath!r} of task {task.name!r} escapes the image root {base}")
    return Path(full)


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([folder, path]) == folder


#: What a run's image errors suggest: the check lists them all (a run stops at the first).
IMAGE_HINT = "`prism data check` lists every image that is missing, cannot be decoded or lies outside its root"


def decode_failure(exc: BaseException, path: Path) -> str:
    """``Type: message`` of a PIL failure, without the path when PIL's message repeats it."""
    said = str(exc)
    return type(exc).__name__ + (f": {said}" if said and str(path) not in said else "")


def load_image(path: Path, *, context: str = "", verifier: ImageVerifier | None = None,
               key: str | None = None) -> "Image.Image":
    """Open an image as RGB; a missing or undecodable file is a DataError naming it.

    Anything PIL raises counts as undecodable, as in ``prism data check``: its
    errors are of many types, and a header claiming a huge size raises
    DecompressionBombError, which is not an OSError. With a ``verifier`` (the
    benchmark has an image manifest) the file is first checked against the
    manifest's entry ``key``; in hash mode the bytes read for the hash are decoded.
    """
    from PIL import Image

    where = f" ({context})" if context else ""
    data = None
    if verifier is not None:
        data = verifier.read(path, key or str(path), where)
    elif not path.is_file():
        raise DataError(f"image not found: {path}{where}", hint=IMAGE_HINT)
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            return image.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise DataError(f"cannot decode image {path}{where}: {decode_failure(exc, path)}",
                        hint=IMAGE_HINT) from None


def pixel_values(images: list["Image.Image"], image_processor: Any) -> torch.Tensor:
    """Preprocess images with the backbone's processor: (N, 3, H, W) float tensor."""
    return image_processor(images=images, return_tensors="pt")["pixel_values"]
