"""Where the processes of a run meet: one machine, or several (torchrun's static rendezvous).

A multi-node run starts one `prism train` per machine, each with the same ``--nnodes`` and
``--master-addr``/``--master-port`` (node 0's address) and its own ``--node-rank``; torchrun on
each node starts that node's ``nproc`` workers and they join one process group. Under SLURM
(one task per node, e.g. ``srun --ntasks-per-node=1 prism train ...``) the node count, this
node's index and node 0's host come from SLURM's variables when ``[distributed]`` leaves
``nnodes`` at 1; explicit settings always win. The port must be the same on every node, so it
is never a random free one here: ``master_port``, else one derived from the SLURM job id (two
jobs sharing a node do not collide), else torchrun's default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prism.errors import ConfigError

#: torchrun's own default rendezvous port
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class Rendezvous:
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    source: str = "config"  # "config" or "slurm": where nnodes / node_rank / master_addr came from

    @property
    def multinode(self) -> bool:
        return self.nnodes > 1

    def torchrun_args(self, port: int) -> list[str]:
        """torchrun's node options (``port``: the one to use when none was chosen for a single node)."""
        if not self.multinode:
            return ["--nnodes=1", f"--master_port={self.master_port or port}"]
        return [f"--nnodes={self.nnodes}", f"--node_rank={self.node_rank}",
                f"--master_addr={self.master_addr}", f"--master_port={self.master_port}"]

    def describe(self) -> dict[str, Any]:
        return {"nnodes": self.nnodes, "node_rank": self.node_rank, "master_addr": self.master_addr,
                "master_port": self.master_port, "rendezvous_source": self.source}


def resolve_rendezvous(distributed: Any, env: Mapping[str, str]) -> Rendezvous:
    """The rendezvous ``[distributed]`` asks for, completed from SLURM's variables when they are there."""
    nnodes, node_rank, addr = distributed.nnodes, distributed.node_rank, distributed.master_addr
    port, source = distributed.master_port, "config"
    slurm_nodes = _slurm_int(env, "SLURM_JOB_NUM_NODES") or _slurm_int(env, "SLURM_NNODES")
    if nnodes == 1 and slurm_nodes and slurm_nodes > 1:
        nnodes, source = slurm_nodes, "slurm"
        node_rank = _slurm_int(env, "SLURM_NODEID") or 0
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if addr is None and nodelist:
            addr = first_host(nodelist)
        if port is None and _slurm_int(env, "SLURM_JOB_ID") is not None:
            port = 20000 + _slurm_int(env, "SLURM_JOB_ID") % 20000
    if nnodes == 1:
        return Rendezvous(master_port=port, source=source)
    if node_rank >= nnodes:
        raise ConfigError(f"[distributed] node_rank = {node_rank} is not a node of nnodes = {nnodes}",
                          hint=f"node ranks run from 0 to {nnodes - 1}; node 0 hosts rank 0")
    if not addr:
        raise ConfigError(f"[distributed] nnodes = {nnodes} needs master_addr: the host name or IP of node 0",
                          hint="pass --master-addr HOST (the same on every node), or run under SLURM")
    return Rendezvous(nnodes=nnodes, node_rank=node_rank, master_addr=addr,
                      master_port=port or DEFAULT_PORT, source=source)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[03-05,07],cpu1`` -> ``gpu03``."""
    head = re.match(r"(?:[^,\[]|\[[^\]]*\])*", nodelist.strip())
    # each bracketed range of the first entry contributes its first value
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], head.group(0) if head else "")


def _slurm_int(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key, "")
    match = re.match(r"\d+", value)
    return int(match.group(0)) if match else None
