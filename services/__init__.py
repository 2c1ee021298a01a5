"""tuneforge's gRPC services: datasets, training (with the model catalog), conversion, inference."""

import os

# Models come from the catalog only. Libraries that would otherwise look a file or a kernel up on
# the Hugging Face hub (transformers, peft, bitsandbytes' optional CPU kernels) must not try: set
# before any of them is imported, since huggingface_hub reads it once on import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
