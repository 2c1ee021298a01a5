import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from tuneforge.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dataset(_message.Message):
    __slots__ = ("name", "display_name", "state", "format", "validation_policy", "column_mapping", "model", "max_seq_len", "split", "source", "content_sha256", "row_count", "train_row_count", "validation_row_count", "invalid_row_count", "statistics", "diagnostics", "diagnostic_counts", "progress", "error", "artifact", "create_time", "update_time", "labels")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Dataset.State]
        PROCESSING: _ClassVar[Dataset.State]
        READY: _ClassVar[Dataset.State]
        FAILED: _ClassVar[Dataset.State]
    STATE_UNSPECIFIED: Dataset.State
    PROCESSING: Dataset.State
    READY: Dataset.State
    FAILED: Dataset.State
    class Format(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FORMAT_UNSPECIFIED: _ClassVar[Dataset.Format]
        CHAT_JSONL: _ClassVar[Dataset.Format]
        PROMPT_COMPLETION_JSONL: _ClassVar[Dataset.Format]
        ALPACA_JSONL: _ClassVar[Dataset.Format]
        PREFERENCE_JSONL: _ClassVar[Dataset.Format]
        CSV: _ClassVar[Dataset.Format]
        PARQUET: _ClassVar[Dataset.Format]
    FORMAT_UNSPECIFIED: Dataset.Format
    CHAT_JSONL: Dataset.Format
    PROMPT_COMPLETION_JSONL: Dataset.Format
    ALPACA_JSONL: Dataset.Format
    PREFERENCE_JSONL: Dataset.Format
    CSV: Dataset.Format
    PARQUET: Dataset.Format
    class ValidationPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        VALIDATION_POLICY_UNSPECIFIED: _ClassVar[Dataset.ValidationPolicy]
        STRICT: _ClassVar[Dataset.ValidationPolicy]
        SKIP_INVALID: _ClassVar[Dataset.ValidationPolicy]
    VALIDATION_POLICY_UNSPECIFIED: Dataset.ValidationPolicy
    STRICT: Dataset.ValidationPolicy
    SKIP_INVALID: Dataset.ValidationPolicy
    class ColumnMappingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class DiagnosticCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_POLICY_FIELD_NUMBER: _ClassVar[int]
    COLUMN_MAPPING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    INVALID_ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTIC_COUNTS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    state: Dataset.State
    format: Dataset.Format
    validation_policy: Dataset.ValidationPolicy
    column_mapping: _containers.ScalarMap[str, str]
    model: str
    max_seq_len: int
    split: SplitConfig
    source: str
    content_sha256: str
    row_count: int
    train_row_count: int
    validation_row_count: int
    invalid_row_count: int
    statistics: DatasetStatistics
    diagnostics: _containers.RepeatedCompositeFieldContainer[Diagnostic]
    diagnostic_counts: _containers.ScalarMap[str, int]
    progress: Progress
    error: _status_pb2.Status
    artifact: _common_pb2.ArtifactRef
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., state: _Optional[_Union[Dataset.State, str]] = ..., format: _Optional[_Union[Dataset.Format, str]] = ..., validation_policy: _Optional[_Union[Dataset.ValidationPolicy, str]] = ..., column_mapping: _Optional[_Mapping[str, str]] = ..., model: _Optional[str] = ..., max_seq_len: _Optional[int] = ..., split: _Optional[_Union[SplitConfig, _Mapping]] = ..., source: _Optional[str] = ..., content_sha256: _Optional[str] = ..., row_count: _Optional[int] = ..., train_row_count: _Optional[int] = ..., validation_row_count: _Optional[int] = ..., invalid_row_count: _Optional[int] = ..., statistics: _Optional[_Union[DatasetStatistics, _Mapping]] = ..., diagnostics: _Optional[_Iterable[_Union[Diagnostic, _Mapping]]] = ..., diagnostic_counts: _Optional[_Mapping[str, int]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., artifact: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SplitConfig(_message.Message):
    __slots__ = ("validation_fraction", "seed", "validation_dataset")
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_DATASET_FIELD_NUMBER: _ClassVar[int]
    validation_fraction: float
    seed: int
    validation_dataset: str
    def __init__(self, validation_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., validation_dataset: _Optional[str] = ...) -> None: ...

class Diagnostic(_message.Message):
    __slots__ = ("line", "field", "code", "message")
    LINE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    line: int
    field: str
    code: str
    message: str
    def __init__(self, line: _Optional[int] = ..., field: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class DatasetStatistics(_message.Message):
    __slots__ = ("rows", "total_tokens", "mean_tokens", "p50_tokens", "p95_tokens", "max_tokens", "trainable_tokens", "rows_over_limit", "length_histogram", "estimated_tokens_per_epoch", "tokenizer_sha256")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    P50_TOKENS_FIELD_NUMBER: _ClassVar[int]
    P95_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROWS_OVER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    LENGTH_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_TOKENS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_SHA256_FIELD_NUMBER: _ClassVar[int]
    rows: int
    total_tokens: int
    mean_tokens: float
    p50_tokens: int
    p95_tokens: int
    max_tokens: int
    trainable_tokens: int
    rows_over_limit: int
    length_histogram: _containers.RepeatedCompositeFieldContainer[HistogramBucket]
    estimated_tokens_per_epoch: int
    tokenizer_sha256: str
    def __init__(self, rows: _Optional[int] = ..., total_tokens: _Optional[int] = ..., mean_tokens: _Optional[float] = ..., p50_tokens: _Optional[int] = ..., p95_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ..., trainable_tokens: _Optional[int] = ..., rows_over_limit: _Optional[int] = ..., length_histogram: _Optional[_Iterable[_Union[HistogramBucket, _Mapping]]] = ..., estimated_tokens_per_epoch: _Optional[int] = ..., tokenizer_sha256: _Optional[str] = ...) -> None: ...

class HistogramBucket(_message.Message):
    __slots__ = ("lower", "upper", "count")
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    lower: int
    upper: int
    count: int
    def __init__(self, lower: _Optional[int] = ..., upper: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("bytes_processed", "bytes_total", "rows_processed")
    BYTES_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROWS_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    bytes_processed: int
    bytes_total: int
    rows_processed: int
    def __init__(self, bytes_processed: _Optional[int] = ..., bytes_total: _Optional[int] = ..., rows_processed: _Optional[int] = ...) -> None: ...

class CreateDatasetRequest(_message.Message):
    __slots__ = ("parent", "dataset_id", "dataset", "source_uri", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    dataset_id: str
    dataset: Dataset
    source_uri: str
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., dataset_id: _Optional[str] = ..., dataset: _Optional[_Union[Dataset, _Mapping]] = ..., source_uri: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class UploadDatasetRequest(_message.Message):
    __slots__ = ("header", "chunk", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: UploadDatasetHeader
    chunk: bytes
    trailer: UploadDatasetTrailer
    def __init__(self, header: _Optional[_Union[UploadDatasetHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ..., trailer: _Optional[_Union[UploadDatasetTrailer, _Mapping]] = ...) -> None: ...

class UploadDatasetTrailer(_message.Message):
    __slots__ = ("size_bytes", "sha256")
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    size_bytes: int
    sha256: str
    def __init__(self, size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadDatasetHeader(_message.Message):
    __slots__ = ("parent", "dataset_id", "dataset", "file_name", "size_bytes", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    dataset_id: str
    dataset: Dataset
    file_name: str
    size_bytes: int
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., dataset_id: _Optional[str] = ..., dataset: _Optional[_Union[Dataset, _Mapping]] = ..., file_name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "filter")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    filter: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PreviewDatasetRequest(_message.Message):
    __slots__ = ("name", "row_count", "split", "model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    row_count: int
    split: str
    model: str
    def __init__(self, name: _Optional[str] = ..., row_count: _Optional[int] = ..., split: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class PreviewDatasetResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[PreviewRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[PreviewRow, _Mapping]]] = ...) -> None: ...

class PreviewRow(_message.Message):
    __slots__ = ("line", "rendered_text", "trained_spans", "token_count", "trainable_token_count")
    LINE_FIELD_NUMBER: _ClassVar[int]
    RENDERED_TEXT_FIELD_NUMBER: _ClassVar[int]
    TRAINED_SPANS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    line: int
    rendered_text: str
    trained_spans: _containers.RepeatedCompositeFieldContainer[TextSpan]
    token_count: int
    trainable_token_count: int
    def __init__(self, line: _Optional[int] = ..., rendered_text: _Optional[str] = ..., trained_spans: _Optional[_Iterable[_Union[TextSpan, _Mapping]]] = ..., token_count: _Optional[int] = ..., trainable_token_count: _Optional[int] = ...) -> None: ...

class TextSpan(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...
