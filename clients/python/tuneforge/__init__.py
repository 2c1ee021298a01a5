"""tuneforge: the Python SDK of the self-hosted fine-tuning platform.

import tuneforge
client = tuneforge.Client()
model = client.models.import_model("tiny", preset="tiny-llama")
"""

from tuneforge.client import Client, ClientConfig, RetryPolicy
from tuneforge.errors import TuneforgeError

__all__ = ["Client", "ClientConfig", "RetryPolicy", "TuneforgeError"]
__version__ = "0.1.0"
