"""Settings of the inference service only (`TUNEFORGE_INFERENCE_*`), next to the ServiceSettings
every service shares: limits of the per-model queues, adapter cache and default generation length.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The longest stream interval, of the setting and of a request's stream_options.interval_ms.
MAX_STREAM_INTERVAL_MS = 10_000


class InferenceSettings(BaseSettings):
    """Read once in `build_service`; the engine and scheduler receive the values they need."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_INFERENCE_", extra="ignore")

    # Requests of one model decoded at once, interleaved one token each per round.
    max_active_requests: int = Field(default=8, ge=1)
    # Requests of one model waiting for an active slot; more answer RESOURCE_EXHAUSTED.
    max_queued_requests: int = Field(default=32, ge=0)
    # Adapters kept loaded on one base; the least recently used idle one is evicted beyond this.
    max_adapters_per_model: int = Field(default=8, ge=1)
    # Generated tokens when a request leaves max_tokens at 0 (always capped by the context).
    default_max_tokens: int = Field(default=256, ge=1)
    # "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    # "auto": float32 on CPU, the stored dtype on a GPU; or float32, bfloat16, float16.
    dtype: str = "auto"
    # Torch intra-op threads of this process (0: torch's default, one per core). Decoding one
    # token of a small model is too little work to split: on a busy 2-core machine a tiny model
    # measured 1.2 ms/token with 1 thread and 17.8 ms/token with 2.
    torch_threads: int = Field(default=0, ge=0)
    # onnxruntime intra-op threads of each ONNX model (0: the CPUs this process may use, cgroup
    # quota included). onnxruntime-genai's own default used one thread here: int4 SmolLM2 took
    # 150 ms for a 60-token prompt and ~11 ms/token with it, 85 ms and ~8 ms/token with 2.
    onnx_threads: int = Field(default=0, ge=0)
    # Python's thread switch interval in this process (sys.setswitchinterval), in ms. A decoding
    # thread that has just left onnxruntime or torch waits up to this long for the GIL while the
    # event loop streams replies; at the default 5 ms, int4 SmolLM2 (10 ms/token) measured
    # 18.3 ms/token beside one busy Python thread, and 10.7 ms/token at 0.5 ms.
    switch_interval_ms: float = Field(default=0.5, gt=0)
    # The least time between two messages of one stream, in ms (0: a message per token). Text
    # made sooner is held and sent joined; the first token and the end are never held. Each
    # streamed message costs ~0.3 ms of CPU in the server's gRPC stack and as much in a Python
    # client: beside int4 ONNX decoding at ~8 ms/token on 2 cores, 5-9% of the throughput.
    # Like vLLM's and SGLang's stream interval, it trades smoothness for throughput. A request's
    # stream_options.interval_ms overrides it for that stream.
    stream_interval_ms: float = Field(default=0.0, ge=0, le=MAX_STREAM_INTERVAL_MS)
