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
    assert command[-2:] == ["-m", "prism"] and "prism.engine.torchrun" in command
    assert json.loads(env[launch.ARGV_ENV]) == ["train", "-m", "ewc"]


# -- several machines -----------------------------------------------------------------------------
def _torchrun_options(command):
    return [part for part in command if part.startswith("--")]


def test_nodes_join_one_static_rendezvous_at_node_zeros_address():
    distributed = DistributedConfig(nproc=4, nnodes=2, node_rank=1, master_addr="node0", master_port=29411)
    assert launch.should_relaunch(DistributedConfig(nnodes=2, master_addr="h"), env={})  # even with one process
    command, _ = launch.launch_command(distributed, ["train"], Path("/project"), env={})
    assert _torchrun_options(command) == ["--nnodes=2", "--node_rank=1", "--master_addr=node0",
                                          "--master_port=29411", "--nproc_per_node=4"]
    # the port must agree on every node: never a random free one
    command, _ = launch.launch_command(DistributedConfig(nnodes=2, master_addr="node0"), ["train"],
                                       Path("/project"), env={})
    assert "--master_port=29500" in command


def test_slurm_supplies_the_nodes_when_the_config_leaves_one():
    from prism.engine.rendezvous import first_host, resolve_rendezvous

    slurm = {"SLURM_JOB_ID": "123456", "SLURM_JOB_NUM_NODES": "3", "SLURM_NODEID": "2",
             "SLURM_JOB_NODELIST": "gpu[07-09],cpu1"}
    nodes = resolve_rendezvous(DistributedConfig(nproc=8), slurm)
    assert (nodes.nnodes, nodes.node_rank, nodes.master_addr, nodes.source) == (3, 2, "gpu07", "slurm")
    assert nodes.master_port == 20000 + 123456 % 20000  # the same on every node of the job
    explicit = resolve_rendezvous(DistributedConfig(master_port=4000, master_addr="login"), slurm)
    assert (explicit.master_addr, explicit.master_port) == ("login", 4000)
    assert not resolve_rendezvous(DistributedConfig(), {"SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "1"}).multinode
    assert [first_host(x) for x in ("a,b", "n[3]", "rack1-n[001-002]", "n[1-2]-x[3-4],z")] == \
        ["a", "n3", "rack1-n001", "n1-x3"]


def test_a_node_outside_the_run_or_without_an_address_is_a_config_error():
    import pytest
    from pydantic import ValidationError

    from prism.engine.rendezvous import resolve_rendezvous
    from prism.errors import ConfigError

    with pytest.raises(ValidationError, match="node_rank = 2 is not a node of nnodes = 2"):
        DistributedConfig(nnodes=2, node_rank=2)
    with pytest.raises(ConfigError, match="needs master_addr"):
        resolve_rendezvous(DistributedConfig(nnodes=2), {})
    with pytest.raises(ConfigError, match="node_rank = 5"):
        resolve_rendezvous(DistributedConfig(), {"SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "5",
                                                 "SLURM_JOB_NODELIST": "a,b"})


def test_the_cli_flags_set_the_distributed_keys(tmp_path):
    from tests.conftest import run_cli

    result = run_cli(["train", "--nnodes", "2", "--node-rank", "3", "--master-addr", "x"], cwd=tmp_path)
    assert result.code == 2 and "node_rank = 3 is not a node of nnodes = 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_worker_is_one_line_and_its_exit_code_without_torchruns_traceback(tmp_path):
    import os
    import subprocess
    import sys

    worker = tmp_path / "worker.py"
    worker.write_text("import sys\nprint('error: the worker says why', file=sys.stderr)\nsys.exit(3)\n")
    command = [sys.executable, "-m", "prism.engine.torchrun", "--nnodes=1", f"--master_port={launch.free_port()}",
               "--nproc_per_node=1", str(worker)]
    env = {k: v for k, v in os.environ.items() if k != "PRISM_DEBUG"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 3
    assert "error: the worker says why" in done.stderr
    assert "worker processes failed: rank 0 (exit code 3)" in done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr
