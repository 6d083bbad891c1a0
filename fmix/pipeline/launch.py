"""Start a training command in one process, or under ``torchrun`` when more GPUs or nodes are configured."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from fmix.params import LaunchParams


def launch_command(params: LaunchParams, args: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The command line that runs ``fmix ARGS`` as ``params`` says.

    One process when ``gpus_per_node <= 1`` and ``nodes == 1``; ``torchrun --nproc_per_node``
    on one node; ``srun`` + ``torchrun`` with a c10d rendezvous on the first node of the SLURM
    allocation (``MASTER_ADDR``, else the first host of ``SLURM_JOB_NODELIST``) otherwise.

    Args:
        params: the ``launch`` section.
        args: the fmix command and its arguments (``["train", ...]``).
        env: the environment (``os.environ`` when None).

    Returns:
        The argument vector.
    """
    if not args:
        raise ValueError("fmix launch needs a command after --, e.g. fmix launch -- train ALIGNED SPLITS OUT")
    env = dict(os.environ if env is None else env)
    processes = max(1, params.gpus_per_node)
    if processes == 1 and params.nodes == 1:
        return [sys.executable, "-m", "fmix", *args]
    torchrun = ["torchrun", "--nnodes", str(params.nodes), "--nproc_per_node", str(processes)]
    if params.nodes == 1:
        return [*torchrun, "--standalone", "-m", "fmix", *args]
    host = env.get("MASTER_ADDR") or _first_slurm_host(env)
    rendezvous = [
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        f"{host}:{params.port}",
        "--rdzv_id",
        env.get("SLURM_JOB_ID", "fmix"),
    ]
    srun = ["srun", "--nodes", str(params.nodes), "--ntasks-per-node", "1"]
    return [*srun, *torchrun, *rendezvous, "-m", "fmix", *args]


def _first_slurm_host(env: dict[str, str]) -> str:
    nodelist = env.get("SLURM_JOB_NODELIST")
    if not nodelist or shutil.which("scontrol") is None:
        raise ValueError("launch.nodes > 1 needs a SLURM allocation (SLURM_JOB_NODELIST and scontrol) or MASTER_ADDR")
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    ).stdout.split()
    return hosts[0]
