"""Runs one training job's worker group: torchrun (one rank per process), as a WorkerProcess."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common.cpus import available_cpus
from services.common.model_files import MODEL_CACHE_ENV
from services.common.settings import StoreSettings
from services.common.worker_process import JOB_ENV, WorkerProcess
from services.training.worker_config import EVENT_TYPES, WorkerConfig


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_group(
    config: WorkerConfig,
    work_dir: Path,
    store: StoreSettings,
    cache_dir: Path,
    on_event: Callable[[dict[str, Any]], None],
    on_log: Callable[[str], None],
) -> WorkerProcess:
    """The (not yet started) torchrun group that trains `config`'s job in `work_dir`.

    `cache_dir` is the service's: built kernels and catalog models (verified, one folder per
    manifest version) are kept there for every later job."""
    work_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    config.to_file(work_dir / "job.json")
    procs = config.distribution.processes_per_node
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(procs),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "services.training.worker",
        "job.json",
    ]
    env = {
        **os.environ,
        **store.env(),
        JOB_ENV: config.job,
        # The deepspeed launcher leaves this unset; ZeRO-3 ran 10x slower without it.
        "OMP_NUM_THREADS": str(max(1, available_cpus() // procs)),
        "TORCH_EXTENSIONS_DIR": str(cache_dir / "torch_extensions"),
        MODEL_CACHE_ENV: str(cache_dir / "models"),
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    return WorkerProcess(cmd, work_dir, env, EVENT_TYPES, on_event, on_log)
