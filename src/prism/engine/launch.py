"""`prism train` on several processes: relaunch the same command under torchrun.

The user types one command; when ``[distributed]`` asks for more than one
process and this process was not started by a launcher, prism starts
``python -m prism.engine.torchrun --nproc_per_node N -m prism <same arguments>`` (torchrun's
own ``torch.distributed.run``, reporting a failed worker in one line)
and waits for it. torchrun (not the deepspeed launcher, which does not set
OMP_NUM_THREADS and oversubscribes small machines) is used for DDP and
DeepSpeed alike (DeepSpeed even for one process: it needs the rendezvous
environment torchrun sets); accelerate then picks up the environment it sets.
The exact command and environment are written next to the run's results.

Several machines: ``--nnodes``/``--node-rank``/``--master-addr`` (or SLURM's variables) make the
same command join torchrun's rendezvous across nodes (engine/rendezvous.py); each node records
its own launch file (``launch.json`` on node 0, ``launch.node<R>.json`` on the others).

Each worker runs ``python -m prism`` (prism/__main__.py), which reads the original
arguments from PRISM_WORKER_ARGV: the engine never imports the command line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prism.engine.rendezvous import resolve_rendezvous
from prism.errors import ConfigError

LAUNCH_FILE = "launch.json"
ARGV_ENV = "PRISM_WORKER_ARGV"
#: environment variables worth recording with a run (the rest of the environment is not)
RECORDED_ENV = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "TORCH_EXTENSIONS_DIR", "MASTER_PORT",
                "NCCL_DEBUG", "PRISM_LOAD_PLUGINS", "PRISM_DISABLED_PLUGINS", "SLURM_JOB_ID",
                "SLURM_JOB_NUM_NODES", "SLURM_NODEID", "SLURM_JOB_NODELIST")


def should_relaunch(distributed: Any, env: Mapping[str, str] | None = None) -> bool:
    """More than one process or node (or DeepSpeed) wanted, and no launcher has started us yet."""
    env = os.environ if env is None else env
    wanted = (distributed.processes > 1 or distributed.backend == "deepspeed"
              or resolve_rendezvous(distributed, env).multinode)
    return wanted and "LOCAL_RANK" not in env


def relaunch_if_wanted(resolved: Any, argv: list[str], announce: Callable[[str], Any]) -> int | None:
    """``prism <argv>`` on the processes ``[distributed]`` asks for: the exit code of the run under
    torchrun, or None when this process trains (one process, or a worker torchrun started).

    Everything a run checks before it starts is checked before torchrun starts, so a run that
    cannot start leaves no launch record.
    """
    distributed = resolved.config.distributed
    if not should_relaunch(distributed):
        return None
    from prism.engine.session import check_before_launch

    check_before_launch(resolved)
    count = distributed.processes
    nodes = resolve_rendezvous(distributed, os.environ)
    where = (f" on node {nodes.node_rank} of {nodes.nnodes} ({count * nodes.nnodes} in all, rendezvous "
             f"{nodes.master_addr}:{nodes.master_port})" if nodes.multinode else "")
    announce(f"prism train: relaunching on {count} process{'es' if count > 1 else ''}{where} "
             f"({distributed.backend}) under torchrun")
    return relaunch(distributed, argv, resolved.project_dir, record_dir(resolved), sources=resolved.sources)


def launch_command(distributed: Any, argv: list[str], project_dir: Path,
                   env: Mapping[str, str] | None = None,
                   sources: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The torchrun command line and environment that rerun ``prism <argv>`` on N processes.

    A DeepSpeed config that cannot work is reported here, before any process starts.
    """
    env = dict(os.environ if env is None else env)
    if distributed.backend == "deepspeed":
        import importlib.util

        from prism.engine.deepspeed_config import load_deepspeed_config

        load_deepspeed_config(distributed, project_dir, sources)
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("[distributed] backend = \"deepspeed\" needs the deepspeed package",
                              hint="pip install 'prism-mcit[deepspeed]', or use backend = \"ddp\"")
        # DeepSpeed compiles small C++/CUDA extensions on first use: keep them with the project
        env.setdefault("TORCH_EXTENSIONS_DIR", str(project_dir / ".prism" / "torch_extensions"))
    if distributed.gpus:
        env["CUDA_VISIBLE_DEVICES"] = distributed.gpus
    nodes = resolve_rendezvous(distributed, env)
    # the arguments travel in the environment: torchrun's own parser would take prism's
    # options (-m, --nproc, ...) for its own
    env[ARGV_ENV] = json.dumps(list(argv))
    port = nodes.master_port or (None if nodes.multinode else free_port())
    # prism.engine.torchrun is torch.distributed.run without its traceback when a worker fails
    command = [sys.executable, "-m", "prism.engine.torchrun", *nodes.torchrun_args(port),
               f"--nproc_per_node={distributed.processes}", "-m", "prism"]
    return command, env


def is_main_process(env: Mapping[str, str] | None = None) -> bool:
    """Rank 0 (or no launcher at all): the process that prints and writes."""
    env = os.environ if env is None else env
    return env.get("RANK", "0") == "0"


def record_dir(resolved: Any) -> Path:
    """Where the launch record goes: the run's results folder."""
    from prism.checkpoint.layout import RunLayout

    cfg = resolved.config
    return RunLayout(resolved.output_dir, cfg.benchmark.id, cfg.method.id, cfg.backbone.id).results_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def relaunch(distributed: Any, argv: list[str], project_dir: Path, record_dir: Path,
             sources: Mapping[str, str] | None = None) -> int:
    """Run the distributed command to completion and return its exit code (Ctrl-C is passed on)."""
    from prism.checkpoint.store import write_json_atomic

    command, env = launch_command(distributed, argv, project_dir, sources=sources)
    nodes = resolve_rendezvous(distributed, env)
    name = LAUNCH_FILE if nodes.node_rank == 0 else f"launch.node{nodes.node_rank}.json"
    write_json_atomic(record_dir / name, {
        "command": command, "arguments": list(argv),
        "environment": {k: env[k] for k in RECORDED_ENV if k in env},
        "processes": distributed.processes, "backend": distributed.backend, **nodes.describe(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    proc = subprocess.Popen(command, env=env)
    while True:
        try:
            return _exit_code(proc.wait())
        except KeyboardInterrupt:  # torchrun forwards SIGINT to the workers, which save and stop
            proc.send_signal(signal.SIGINT)


def _exit_code(code: int) -> int:
    """torchrun reports a worker's failure as 1; a signal as a negative number."""
    return 128 - code if code < 0 else code

