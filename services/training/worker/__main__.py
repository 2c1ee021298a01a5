"""`python -m services.training.worker job.json`: run one rank of a training job."""

from __future__ import annotations

import sys

from services.training.worker.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
