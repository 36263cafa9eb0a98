"""Every registered metric id resolves to a function in prism.evaluation.metrics,
and evaluation never imports torch or transformers."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

from prism import builtin_plugin


def registered_metrics() -> dict[str, str]:
    found: dict[str, str] = {}
    builtin_plugin.register_metrics(lambda id, target, summary="": found.__setitem__(id, target))
    return found


@pytest.mark.parametrize("metric_id, target", sorted(registered_metrics().items()))
def test_registered_metric_resolves(metric_id, target):
    module_name, _, attr = target.partition(":")
    function = getattr(importlib.import_module(module_name), attr)
    params = inspect.signature(function).parameters
    assert list(params)[0] == "predictions"
    assert params["gt"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["options"].kind is inspect.Parameter.KEYWORD_ONLY
    result = function([], gt={"images": [], "annotations": []} if metric_id == "coco_caption" else None)
    assert result.n == 0 and isinstance(result.to_dict(), dict)


def test_evaluation_does_not_import_torch():
    code = (
        "import sys\n"
        "import prism.evaluation.metrics, prism.evaluation.cl_metrics, prism.evaluation.matrix\n"
        "import prism.evaluation.plots, prism.evaluation.report\n"
        "bad = [m for m in ('torch', 'transformers', 'numpy', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
