import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    INVALID_ARGUMENT: _ClassVar[ErrorReason]
    RESOURCE_NOT_FOUND: _ClassVar[ErrorReason]
    RESOURCE_ALREADY_EXISTS: _ClassVar[ErrorReason]
    STORE_UNAVAILABLE: _ClassVar[ErrorReason]
    ARTIFACT_CORRUPT: _ClassVar[ErrorReason]
    DATASET_NOT_READY: _ClassVar[ErrorReason]
    DATASET_INVALID: _ClassVar[ErrorReason]
    MODEL_SOURCE_INVALID: _ClassVar[ErrorReason]
    ADAPTER_BASE_MISMATCH: _ClassVar[ErrorReason]
    JOB_STATE_CONFLICT: _ClassVar[ErrorReason]
    PARITY_BELOW_THRESHOLD: _ClassVar[ErrorReason]
    QUEUE_FULL: _ClassVar[ErrorReason]
    MODEL_NOT_READY: _ClassVar[ErrorReason]
    REQUEST_ID_CONFLICT: _ClassVar[ErrorReason]
    INVALID_CONFIGURATION: _ClassVar[ErrorReason]
    INTERNAL_ERROR: _ClassVar[ErrorReason]
    UPLOAD_INTERRUPTED: _ClassVar[ErrorReason]
    UNIMPLEMENTED: _ClassVar[ErrorReason]
    FAILED_PRECONDITION: _ClassVar[ErrorReason]
    UNAVAILABLE: _ClassVar[ErrorReason]
    ABORTED: _ClassVar[ErrorReason]
    WORKER_FAILED: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
INVALID_ARGUMENT: ErrorReason
RESOURCE_NOT_FOUND: ErrorReason
RESOURCE_ALREADY_EXISTS: ErrorReason
STORE_UNAVAILABLE: ErrorReason
ARTIFACT_CORRUPT: ErrorReason
DATASET_NOT_READY: ErrorReason
DATASET_INVALID: ErrorReason
MODEL_SOURCE_INVALID: ErrorReason
ADAPTER_BASE_MISMATCH: ErrorReason
JOB_STATE_CONFLICT: ErrorReason
PARITY_BELOW_THRESHOLD: ErrorReason
QUEUE_FULL: ErrorReason
MODEL_NOT_READY: ErrorReason
REQUEST_ID_CONFLICT: ErrorReason
INVALID_CONFIGURATION: ErrorReason
INTERNAL_ERROR: ErrorReason
UPLOAD_INTERRUPTED: ErrorReason
UNIMPLEMENTED: ErrorReason
FAILED_PRECONDITION: ErrorReason
UNAVAILABLE: ErrorReason
ABORTED: ErrorReason
WORKER_FAILED: ErrorReason

class ArtifactFile(_message.Message):
    __slots__ = ("path", "sha256", "size_bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    size_bytes: int
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ArtifactRef(_message.Message):
    __slots__ = ("uri", "manifest_sha256", "files", "total_size_bytes")
    URI_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    uri: str
    manifest_sha256: str
    files: _containers.RepeatedCompositeFieldContainer[ArtifactFile]
    total_size_bytes: int
    def __init__(self, uri: _Optional[str] = ..., manifest_sha256: _Optional[str] = ..., files: _Optional[_Iterable[_Union[ArtifactFile, _Mapping]]] = ..., total_size_bytes: _Optional[int] = ...) -> None: ...

class Lineage(_message.Message):
    __slots__ = ("base_model", "base_model_sha256", "training_dataset", "training_dataset_sha256", "validation_dataset", "validation_dataset_sha256", "training_job", "conversion_job", "tokenizer_sha256", "chat_template_sha256", "config_json", "seed")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DATASET_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_DATASET_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_JOB_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_SHA256_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    base_model_sha256: str
    training_dataset: str
    training_dataset_sha256: str
    validation_dataset: str
    validation_dataset_sha256: str
    training_job: str
    conversion_job: str
    tokenizer_sha256: str
    chat_template_sha256: str
    config_json: str
    seed: int
    def __init__(self, base_model: _Optional[str] = ..., base_model_sha256: _Optional[str] = ..., training_dataset: _Optional[str] = ..., training_dataset_sha256: _Optional[str] = ..., validation_dataset: _Optional[str] = ..., validation_dataset_sha256: _Optional[str] = ..., training_job: _Optional[str] = ..., conversion_job: _Optional[str] = ..., tokenizer_sha256: _Optional[str] = ..., chat_template_sha256: _Optional[str] = ..., config_json: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content", "weight")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    weight: int
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class GenerationParameters(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "repetition_penalty")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    repetition_penalty: float
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., repetition_penalty: _Optional[float] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("time", "level", "source", "message")
    TIME_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    level: str
    source: str
    message: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., level: _Optional[str] = ..., source: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
