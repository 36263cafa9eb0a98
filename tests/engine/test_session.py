"""Paths in prism.toml are relative to the file's folder, not to where prism was started."""

from __future__ import annotations

from prism.engine.session import _project_path


def test_relative_paths_resolve_against_the_project_folder(tmp_path):
    (tmp_path / "towers" / "clip").mkdir(parents=True)
    assert _project_path("towers/clip", tmp_path) == str(tmp_path / "towers" / "clip")
    assert _project_path("builtin:tiny-llava", tmp_path) == "builtin:tiny-llava"
    assert _project_path("openai/clip-vit-large-patch14-336", tmp_path) == "openai/clip-vit-large-patch14-336"
    assert _project_path(str(tmp_path / "abs"), tmp_path) == str(tmp_path / "abs")
    assert _project_path(None, tmp_path) is None


def test_per_task_train_overrides(project):
    import pytest

    from prism.config import load_config
    from prism.engine.session import plan_run
    from prism.errors import ConfigError

    resolved = load_config(project / "prism.toml", cwd=project, env={}, sets=[
        'train.overrides = { shape_mc = { max_steps = 7, global_batch_size = 4, lr = 1e-3 } }'])
    train = resolved.config.train
    assert train.for_task("colour") is train
    shape = train.for_task("shape_mc")
    assert (shape.max_steps, shape.global_batch_size, shape.lr, shape.weight_decay) == (7, 4, 1e-3, train.weight_decay)
    plan_run(resolved)  # known task names

    typo = load_config(project / "prism.toml", cwd=project, env={}, sets=['train.overrides = { shape = { lr = 1e-3 } }'])
    with pytest.raises(ConfigError, match=r'\[train.overrides."shape"\].*no task .shape.'):
        plan_run(typo)
    with pytest.raises(ConfigError, match="unknown key 'batch'"):
        load_config(project / "prism.toml", cwd=project, env={}, sets=['train.overrides = { colour = { batch = 4 } }'])
    tight = load_config(project / "prism.toml", cwd=project, env={},
                        sets=["train.micro_batch_size=8", 'train.overrides = { colour = { global_batch_size = 4 } }'])
    with pytest.raises(ConfigError, match="micro_batch_size"):
        tight.config.train.for_task("colour")
