"""The engine decides whether `prism train` relaunches itself under torchrun (cheap: no run)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from prism.config.schema import DistributedConfig
from prism.engine import launch


def _resolved(**distributed) -> SimpleNamespace:
    config = SimpleNamespace(distributed=DistributedConfig(**distributed),
                             benchmark=SimpleNamespace(id="synthetic"), method=SimpleNamespace(id="ewc"),
                             backbone=SimpleNamespace(id="llava"))
    return SimpleNamespace(config=config, project_dir=Path("/project"), output_dir=Path("/project/outputs"),
                           sources={})


def test_one_process_trains_here(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    said = []
    assert launch.relaunch_if_wanted(_resolved(), ["train"], announce=said.append) is None
    assert said == []


def test_a_worker_torchrun_started_trains_here(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch.relaunch_if_wanted(_resolved(nproc=2), ["train"], announce=print) is None


def test_several_processes_check_then_relaunch(monkeypatch):
    from prism.engine import session

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    calls = []
    monkeypatch.setattr(session, "check_before_launch", lambda resolved: calls.append("checked"))
    monkeypatch.setattr(launch, "relaunch", lambda distributed, argv, project_dir, record_dir, sources=None:
                        calls.append(("relaunched", distributed.processes, argv, record_dir)) or 7)
    said = []
    code = launch.relaunch_if_wanted(_resolved(nproc=2), ["train", "--nproc", "2"], announce=said.append)
    assert code == 7
    assert calls == ["checked", ("relaunched", 2, ["train", "--nproc", "2"],
                                 Path("/project/outputs/results/synthetic/ewc"))]
    assert said == ["prism train: relaunching on 2 processes (ddp) under torchrun"]


def test_workers_run_python_m_prism_with_the_arguments_in_the_environment():
    import json

    command, env = launch.launch_command(DistributedConfig(nproc=2), ["train", "-m", "ewc"], Path("/project"),
                                         env={})
    assert command[-2:] == ["-m", "prism"] and "torch.distributed.run" in command
    assert json.loads(env[launch.ARGV_ENV]) == ["train", "-m", "ewc"]
