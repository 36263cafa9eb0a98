"""Errors the CLI turns into one actionable message and an exit code.

``ConfigError`` / ``UsageError`` exit with 2 (the user must change what they
typed or wrote); ``PrismError`` and its other subclasses exit with 1 (something
failed while running).
"""

from __future__ import annotations


class PrismError(Exception):
    """A runtime failure with a message meant for the user (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(PrismError):
    """Wrong command-line usage (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """An invalid configuration value; names where it came from (exit code 2)."""


class DataError(PrismError):
    """Benchmark data that cannot be used: names the file and record."""


class CheckpointError(PrismError):
    """A checkpoint that is missing, incomplete or does not verify."""


class PluginError(PrismError):
    """A plugin that failed to load or registered something inconsistent."""
