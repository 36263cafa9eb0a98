"""Which ground-truth image a caption record is about: by image id or file name, never by position.

The caption metric matches predictions with it, and ``prism data check`` test
records, so that a data check passes exactly when scoring can match.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

__all__ = ["CaptionMatcher"]


def _image_name(record: Mapping[str, Any]) -> str | None:
    metadata = record.get("metadata") or {}
    image = metadata.get("image") if isinstance(metadata, dict) else None
    image = image or record.get("image")
    return os.path.basename(str(image).replace("\\", "/")) if image else None


def _file_aliases(file_name: str) -> set[str]:
    """The names a question_id may give an image by: its file_name, its base name (no folders),
    each with or without the extension (``VizWiz_val_00000017`` for ``val/VizWiz_val_00000017.jpg``)."""
    path = file_name.replace("\\", "/")
    base = os.path.basename(path)
    return {path, os.path.splitext(path)[0], base, os.path.splitext(base)[0]}


class CaptionMatcher:
    """Maps a prediction to a gt image key (the image id as a string); never by position.

    In order: the ``question_id`` is a gt image id and the prediction's image file
    (if it names one) is that image; else the prediction's image file
    (``metadata.image``) names one gt image; else, when the prediction names no
    image, the ``question_id`` is one gt image's file name with or without
    extension or folders (UCIT's caption test files and HiDe-LLaVA's merged
    prediction files use the file stem). A disagreement between id and file name
    is resolved by the file name (it is what the model saw) and counted.
    """

    def __init__(self, images: list[dict[str, Any]]):
        self.name_of: dict[str, str] = {}
        self.ids_by_name: dict[str, list[str]] = {}
        self.ids_by_alias: dict[str, list[str]] = {}
        for image in images:
            key = str(image["id"])
            name = os.path.basename(image["file_name"].replace("\\", "/"))
            self.name_of[key] = name
            self.ids_by_name.setdefault(name, []).append(key)
            for alias in _file_aliases(image["file_name"]):
                self.ids_by_alias.setdefault(alias, []).append(key)
        self.by_id = 0
        self.by_file_name = 0
        self.by_question_id_file_name = 0
        self.conflicts = 0

    def find(self, record: Mapping[str, Any]) -> tuple[str | None, str]:
        """The gt image key of ``record``, or None and why it matches none."""
        qid = str(record.get("question_id"))
        name = _image_name(record)
        named = self.ids_by_name.get(name, []) if name else []
        if qid in self.name_of and (name is None or self.name_of[qid] == name):
            self.by_id += 1
            return qid, ""
        if len(named) == 1:
            self.by_file_name += 1
            self.conflicts += qid in self.name_of
            return named[0], ""
        aliased = self.ids_by_alias.get(qid, []) if name is None else []
        if len(aliased) == 1:
            self.by_question_id_file_name += 1
            return aliased[0], ""
        if len(named) > 1:
            return None, f"image {name!r} is shared by {len(named)} ground-truth images"
        if len(aliased) > 1:
            return None, f"the question_id is the file name of {len(aliased)} ground-truth images"
        if name:
            return None, f"neither the question_id nor the image file name {name!r} is in the ground truth"
        return None, ("neither the question_id nor the image file name is in the ground truth (the record "
                      "names no image)")
