"""prism-lwf: Learning without Forgetting as a prism plugin (method id ``lwf``)."""

__version__ = "0.1.0"
