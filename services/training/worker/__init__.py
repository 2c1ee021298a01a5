"""The training worker: one process per device under torchrun, driven by a job.json
(`services.training.worker_config.WorkerConfig`), reporting events on rank 0's stdout.

Entry: `python -m services.training.worker job.json` (see `__main__`), or `run_worker(path)`.
"""

from services.training.worker.main import run_worker

__all__ = ["run_worker"]
