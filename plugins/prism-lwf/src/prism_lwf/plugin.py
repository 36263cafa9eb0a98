"""The entry point prism loads: registers the ``lwf`` method by name only.

Keep this module import-light (no torch, not even the method module): prism
imports it on every start, including each shell-completion keystroke.
"""

from __future__ import annotations

from prism import hookimpl


@hookimpl
def register_methods(register):
    register("lwf", "prism_lwf.method:LwF",
             "Learning without Forgetting: distil the previous task's model on the current inputs")
