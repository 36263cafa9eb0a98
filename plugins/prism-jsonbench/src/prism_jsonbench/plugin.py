"""The entry point prism loads: registers the ``jsonseq`` benchmark by name only (no imports)."""

from __future__ import annotations

from prism import hookimpl


@hookimpl
def register_benchmarks(register):
    register("jsonseq", "prism_jsonbench.benchmark:JsonSequence",
             "a task sequence from tasks.toml / tasks.json under [benchmark] root, in prism's file formats")
