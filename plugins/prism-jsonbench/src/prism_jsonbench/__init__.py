"""prism-jsonbench: task sequences defined by a manifest file (benchmark id ``jsonseq``)."""

__version__ = "0.1.0"
