"""Instruction encoders: the text embedding a method routes an instruction on, and who made it.

SMoLoRA's release embeds each task's instruction with sentence-transformers' all-MiniLM-L6-v2
(384-d, mean-pooled); PRISM falls back to a CLIP text embedding. prism offers both: a
sentence-transformers model (the optional extra ``pip install 'prism-mcit[sentence]'``) or the
routing tower's CLIP text model (``[backbone] routing_tower``). Every encoder has
``text_embeddings(texts) -> [N, dim]``, ``dim``, ``fingerprint`` and ``identity()``: the identity is
stored next to anything made from its embeddings, and a checkpoint whose identity differs from
the loading run's encoder is refused (embeddings from two encoders are not comparable).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from typing import Any, Sequence

from prism.errors import ConfigError

log = logging.getLogger(__name__)

SENTENCE = "sentence-transformers"
CLIP = "clip"
DEFAULT_SENTENCE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def sentence_transformers_available() -> bool:
    return importlib.util.find_spec("sentence_transformers") is not None


def load_sentence_model(source: str, *, local_only: bool, device: Any = "cpu") -> Any:
    """A ``SentenceTransformer``; ``local_only``: from a folder or the Hugging Face cache, never a download."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(source, device=str(device), local_files_only=local_only)


class SentenceText:
    """A sentence-transformers model as an instruction encoder (its own pooling and normalisation)."""

    kind = SENTENCE

    def __init__(self, model: Any, source: str):
        self.model = model
        self.source = source
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    @property
    def fingerprint(self) -> str:
        """Hash of the model name, dimension, module types and the first weights: another model, or the same
        name with other weights, gives another fingerprint."""
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps({"source": self.source, "dim": self.dim, "modules": [
                type(m).__name__ for m in _modules(self.model)]}, sort_keys=True).encode())
            parameters = getattr(self.model, "parameters", None)
            first = next(iter(parameters()), None) if callable(parameters) else None
            if first is not None:
                digest.update(first.detach().float().flatten()[:4096].cpu().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "dim": self.dim, "fingerprint": self.fingerprint}

    def text_embeddings(self, texts: Sequence[str]):
        import torch

        from prism.backbones.routing import instruction_text

        if not texts:
            return torch.zeros(0, self.dim)
        encoded = self.model.encode([instruction_text(t) for t in texts], convert_to_tensor=True,
                                    show_progress_bar=False)
        return torch.as_tensor(encoded).float().cpu()


class ClipText:
    """The routing tower's CLIP text embedding (projected, unit length) as an instruction encoder."""

    kind = CLIP

    def __init__(self, tower: Any):
        self.tower = tower

    @property
    def dim(self) -> int:
        return self.tower.dim

    @property
    def fingerprint(self) -> str:
        return self.tower.fingerprint

    @property
    def source(self) -> str:
        return self.tower.source

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "dim": self.dim, "fingerprint": self.fingerprint}

    def text_embeddings(self, texts: Sequence[str]):
        return self.tower.text_embeddings(texts).float().cpu()


def instruction_encoder(setting: str, backbone: Any, *, sentence_model: str = DEFAULT_SENTENCE_MODEL,
                        key: str = "[method] instruction_encoder") -> SentenceText | ClipText:
    """The encoder ``setting`` names: "sentence" (required), "clip", or "auto" (sentence-transformers when the
    package and the model are on this machine, without a download; the routing tower's CLIP text otherwise)."""
    from prism.backbones.routing import routing_tower_for

    device = _model_device(backbone.model)
    if setting == "sentence":
        if not sentence_transformers_available():
            raise ConfigError(f"{key} = 'sentence' needs the sentence-transformers package",
                              hint="pip install 'prism-mcit[sentence]', or set it to 'clip' or 'auto'")
        try:
            return SentenceText(load_sentence_model(sentence_model, local_only=False, device=device), sentence_model)
        except (OSError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"{key} = 'sentence': cannot load {sentence_model!r} ({reason})") from None
    if setting == "auto" and sentence_transformers_available():
        try:
            return SentenceText(load_sentence_model(sentence_model, local_only=True, device=device), sentence_model)
        except (OSError, ValueError) as exc:
            log.info("%s = 'auto': %s is not on this machine (%s); using the routing tower's CLIP text",
                     key, sentence_model, type(exc).__name__)
    if setting not in ("auto", "clip", "sentence"):
        raise ConfigError(f"{key} = {setting!r}: use 'auto', 'sentence' or 'clip'")
    return ClipText(routing_tower_for(None, backbone))


def _modules(model: Any) -> list[Any]:
    try:
        return list(model)
    except TypeError:
        return []


def _model_device(model: Any) -> Any:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return "cpu"
