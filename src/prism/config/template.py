"""The annotated prism.toml that ``prism init`` writes (identical to the repository's own)."""

from __future__ import annotations

from importlib import resources

TEMPLATE_NAME = "default_prism.toml"


def default_toml_text() -> str:
    """The template's text, read from the installed package."""
    return resources.files("prism.config").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")
