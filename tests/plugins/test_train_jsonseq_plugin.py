"""The pip-installed jsonseq benchmark plugin trains on the embedded default's data, in manifest order."""

from __future__ import annotations

import json

from .conftest import QUICK_TRAIN, REPO, TRAIN_ENV, prism

MANIFEST = REPO / "plugins" / "prism-jsonbench" / "examples" / "shapes-reversed" / "tasks.toml"


def test_jsonseq_trains_the_manifest_order(plugin_site, default_project):
    (default_project / "seq").mkdir()
    text = MANIFEST.read_text().replace("../../../../data/synthetic", "../data/synthetic")
    (default_project / "seq" / "tasks.toml").write_text(text)
    result = prism(plugin_site, "train", "--benchmark", "jsonseq", "--tasks", "0-1",
                   "--set", "benchmark.root='seq'", *QUICK_TRAIN, "--json", cwd=default_project, **TRAIN_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["tasks"] == ["position", "count"]
