"""The content-hash manifest of a benchmark's images (``prism_images.sha256`` in its root).

Public MCIT releases are known to ship a mirror with images missing, or an archive
holding another dataset's images under the same names: the image path alone does
not say which picture a record trains on. ``prism data check --write-manifest``
records the sha256 and size of every image the benchmark's records reference;
when the manifest exists, training and evaluation check each image as they read
it (its size always, its hash with ``[benchmark] verify_images = "hash"``), and a
file that differs is a DataError naming the record, the file and the expected
hash. The hash is the image's identity (caches of tower features key on it).

One line per image, sorted by path: ``<sha256> <size> <path>``, the path relative
to the benchmark root with ``/`` separators (the task's image root joined with the
record's ``image``), so the manifest stays valid when the folder moves.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from prism.atomic import write_file_atomic
from prism.errors import DataError

MANIFEST_FILE = "prism_images.sha256"
#: ``[benchmark] verify_images``: what is compared with the manifest when an image is read
VERIFY_MODES: tuple[str, ...] = ("size", "hash")
_HEADER = "# prism image manifest 1: <sha256> <size in bytes> <path relative to the benchmark root>"
REWRITE_HINT = ("restore the original file, or if the new one is right, rerun "
                "`prism data check --write-manifest`")


@dataclass(frozen=True)
class ImageEntry:
    sha256: str
    size: int


def image_key(image_root: str, relpath: str) -> str:
    """The manifest's name of a record's image: ``image_root/relpath``, normalised, with ``/``."""
    joined = posixpath.join(str(image_root).replace(os.sep, "/"), str(relpath).replace(os.sep, "/"))
    return posixpath.normpath(joined)


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_of(path: Path) -> ImageEntry:
    """sha256 and size of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return ImageEntry(digest.hexdigest(), size)


class ImageManifest:
    """The manifest of one benchmark root: image key -> (sha256, size)."""

    def __init__(self, path: Path, entries: dict[str, ImageEntry]):
        self.path = Path(path)
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> ImageEntry | None:
        return self.entries.get(key)

    @classmethod
    def load(cls, root: Path) -> "ImageManifest | None":
        """The manifest in ``root``, None when there is none; a malformed line is a DataError."""
        path = Path(root) / MANIFEST_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read the image manifest {path}: {exc}") from None
        entries: dict[str, ImageEntry] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split(" ", 2)
            ok = len(parts) == 3 and len(parts[0]) == 64 and parts[1].isdigit() and parts[2]
            if ok:
                try:
                    int(parts[0], 16)
                except ValueError:
                    ok = False
            if not ok:
                raise DataError(f"{path}:{number}: expected '<sha256> <size> <path>', got {line[:120]!r}",
                                hint="rewrite it with `prism data check --write-manifest`")
            entries[parts[2]] = ImageEntry(parts[0].lower(), int(parts[1]))
        return cls(path, entries)

    @staticmethod
    def write(root: Path, entries: dict[str, ImageEntry]) -> Path:
        """Write the manifest atomically (a temp file in ``root``, fsynced, then renamed over)."""
        path = Path(root) / MANIFEST_FILE
        body = "".join(f"{e.sha256} {e.size} {key}\n" for key, e in sorted(entries.items()))
        try:
            write_file_atomic(path, _HEADER + "\n" + body)
        except OSError as exc:
            raise DataError(f"cannot write the image manifest {path}: {exc}") from None
        return path


@dataclass(frozen=True)
class ImageVerifier:
    """Checks images against a manifest as they are read (``mode``: "size" or "hash")."""

    manifest: ImageManifest
    mode: str = "size"

    def read(self, path: Path, key: str, where: str) -> bytes | None:
        """The file's bytes when they were read for the hash, else None; a mismatch is a DataError.

        ``where`` names the record (`` (task ..., <annotation file>, id ...)``).
        """
        entry = self.manifest.get(key)
        if entry is None:
            raise DataError(f"image {path}{where} is not in the image manifest {self.manifest.path} "
                            f"(as {key!r})", hint="rerun `prism data check --write-manifest` after adding images")
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise DataError(f"image not found: {path}{where}; the image manifest {self.manifest.path} "
                            f"expects sha256 {entry.sha256} ({entry.size} bytes)",
                            hint="the benchmark's copy is incomplete: fetch the missing images") from None
        if size != entry.size:
            raise DataError(f"image {path}{where} does not match the image manifest {self.manifest.path}: "
                            f"{size} bytes, expected {entry.size} (sha256 {entry.sha256})", hint=REWRITE_HINT)
        if self.mode != "hash":
            return None
        data = path.read_bytes()
        actual = hash_bytes(data)
        if actual != entry.sha256:
            raise DataError(f"image {path}{where} does not match the image manifest {self.manifest.path}: "
                            f"sha256 {actual}, expected {entry.sha256}", hint=REWRITE_HINT)
        return data


def verifier_for(root: Path, mode: str = "size") -> ImageVerifier | None:
    """The verifier of ``root``'s manifest, None when the benchmark has no manifest."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify mode must be one of {VERIFY_MODES}, got {mode!r}")
    manifest = ImageManifest.load(root)
    return None if manifest is None else ImageVerifier(manifest, mode)
