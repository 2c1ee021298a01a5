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

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_FORMAT_UNSPECIFIED: _ClassVar[OutputFormat]
    MERGED: _ClassVar[OutputFormat]
    ONNX: _ClassVar[OutputFormat]

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    FP32: _ClassVar[Precision]
    INT8: _ClassVar[Precision]
    INT4: _ClassVar[Precision]
OUTPUT_FORMAT_UNSPECIFIED: OutputFormat
MERGED: OutputFormat
ONNX: OutputFormat
PRECISION_UNSPECIFIED: Precision
FP32: Precision
INT8: Precision
INT4: Precision

class ConversionJob(_message.Message):
    __slots__ = ("name", "display_name", "source_model", "adapter_model", "output_formats", "precision", "parity", "force_publish", "output_model_id", "labels", "state", "stage", "progress", "error", "output_models", "parity_report", "create_time", "start_time", "end_time", "update_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[ConversionJob.State]
        PENDING: _ClassVar[ConversionJob.State]
        RUNNING: _ClassVar[ConversionJob.State]
        SUCCEEDED: _ClassVar[ConversionJob.State]
        FAILED: _ClassVar[ConversionJob.State]
        CANCELLING: _ClassVar[ConversionJob.State]
        CANCELLED: _ClassVar[ConversionJob.State]
    STATE_UNSPECIFIED: ConversionJob.State
    PENDING: ConversionJob.State
    RUNNING: ConversionJob.State
    SUCCEEDED: ConversionJob.State
    FAILED: ConversionJob.State
    CANCELLING: ConversionJob.State
    CANCELLED: ConversionJob.State
    class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STAGE_UNSPECIFIED: _ClassVar[ConversionJob.Stage]
        DOWNLOADING: _ClassVar[ConversionJob.Stage]
        MERGING: _ClassVar[ConversionJob.Stage]
        EXPORTING: _ClassVar[ConversionJob.Stage]
        QUANTIZING: _ClassVar[ConversionJob.Stage]
        CHECKING_PARITY: _ClassVar[ConversionJob.Stage]
        PUBLISHING: _ClassVar[ConversionJob.Stage]
    STAGE_UNSPECIFIED: ConversionJob.Stage
    DOWNLOADING: ConversionJob.Stage
    MERGING: ConversionJob.Stage
    EXPORTING: ConversionJob.Stage
    QUANTIZING: ConversionJob.Stage
    CHECKING_PARITY: ConversionJob.Stage
    PUBLISHING: ConversionJob.Stage
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    FORCE_PUBLISH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MODELS_FIELD_NUMBER: _ClassVar[int]
    PARITY_REPORT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    source_model: str
    adapter_model: str
    output_formats: _containers.RepeatedScalarFieldContainer[OutputFormat]
    precision: Precision
    parity: ParityConfig
    force_publish: bool
    output_model_id: str
    labels: _containers.ScalarMap[str, str]
    state: ConversionJob.State
    stage: ConversionJob.Stage
    progress: float
    error: _status_pb2.Status
    output_models: _containers.RepeatedScalarFieldContainer[str]
    parity_report: ParityReport
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., source_model: _Optional[str] = ..., adapter_model: _Optional[str] = ..., output_formats: _Optional[_Iterable[_Union[OutputFormat, str]]] = ..., precision: _Optional[_Union[Precision, str]] = ..., parity: _Optional[_Union[ParityConfig, _Mapping]] = ..., force_publish: _Optional[bool] = ..., output_model_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[ConversionJob.State, str]] = ..., stage: _Optional[_Union[ConversionJob.Stage, str]] = ..., progress: _Optional[float] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., output_models: _Optional[_Iterable[str]] = ..., parity_report: _Optional[_Union[ParityReport, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ParityConfig(_message.Message):
    __slots__ = ("golden_prompts", "dataset", "max_rows", "max_new_tokens", "thresholds")
    GOLDEN_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    golden_prompts: _containers.RepeatedScalarFieldContainer[str]
    dataset: str
    max_rows: int
    max_new_tokens: int
    thresholds: ParityThresholds
    def __init__(self, golden_prompts: _Optional[_Iterable[str]] = ..., dataset: _Optional[str] = ..., max_rows: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., thresholds: _Optional[_Union[ParityThresholds, _Mapping]] = ...) -> None: ...

class ParityThresholds(_message.Message):
    __slots__ = ("min_greedy_agreement", "max_perplexity_increase", "max_mean_logit_delta")
    MIN_GREEDY_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_PERPLEXITY_INCREASE_FIELD_NUMBER: _ClassVar[int]
    MAX_MEAN_LOGIT_DELTA_FIELD_NUMBER: _ClassVar[int]
    min_greedy_agreement: float
    max_perplexity_increase: float
    max_mean_logit_delta: float
    def __init__(self, min_greedy_agreement: _Optional[float] = ..., max_perplexity_increase: _Optional[float] = ..., max_mean_logit_delta: _Optional[float] = ...) -> None: ...

class ParityReport(_message.Message):
    __slots__ = ("prompt_count", "greedy_agreement", "max_logit_delta", "mean_logit_delta", "reference_perplexity", "candidate_perplexity", "thresholds", "passed", "forced", "prompts")
    PROMPT_COUNT_FIELD_NUMBER: _ClassVar[int]
    GREEDY_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_LOGIT_DELTA_FIELD_NUMBER: _ClassVar[int]
    MEAN_LOGIT_DELTA_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    prompt_count: int
    greedy_agreement: float
    max_logit_delta: float
    mean_logit_delta: float
    reference_perplexity: float
    candidate_perplexity: float
    thresholds: ParityThresholds
    passed: bool
    forced: bool
    prompts: _containers.RepeatedCompositeFieldContainer[PromptComparison]
    def __init__(self, prompt_count: _Optional[int] = ..., greedy_agreement: _Optional[float] = ..., max_logit_delta: _Optional[float] = ..., mean_logit_delta: _Optional[float] = ..., reference_perplexity: _Optional[float] = ..., candidate_perplexity: _Optional[float] = ..., thresholds: _Optional[_Union[ParityThresholds, _Mapping]] = ..., passed: _Optional[bool] = ..., forced: _Optional[bool] = ..., prompts: _Optional[_Iterable[_Union[PromptComparison, _Mapping]]] = ...) -> None: ...

class PromptComparison(_message.Message):
    __slots__ = ("prompt", "reference_text", "candidate_text", "agreement")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_TEXT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_TEXT_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    reference_text: str
    candidate_text: str
    agreement: float
    def __init__(self, prompt: _Optional[str] = ..., reference_text: _Optional[str] = ..., candidate_text: _Optional[str] = ..., agreement: _Optional[float] = ...) -> None: ...

class ConversionJobEvent(_message.Message):
    __slots__ = ("sequence", "time", "state_change", "progress", "log", "parity_report")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    PARITY_REPORT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    state_change: ConversionStateChange
    progress: ConversionProgress
    log: _common_pb2.LogLine
    parity_report: ParityReport
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_change: _Optional[_Union[ConversionStateChange, _Mapping]] = ..., progress: _Optional[_Union[ConversionProgress, _Mapping]] = ..., log: _Optional[_Union[_common_pb2.LogLine, _Mapping]] = ..., parity_report: _Optional[_Union[ParityReport, _Mapping]] = ...) -> None: ...

class ConversionStateChange(_message.Message):
    __slots__ = ("previous_state", "state", "reason")
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    previous_state: ConversionJob.State
    state: ConversionJob.State
    reason: str
    def __init__(self, previous_state: _Optional[_Union[ConversionJob.State, str]] = ..., state: _Optional[_Union[ConversionJob.State, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ConversionProgress(_message.Message):
    __slots__ = ("stage", "progress")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    stage: ConversionJob.Stage
    progress: float
    def __init__(self, stage: _Optional[_Union[ConversionJob.Stage, str]] = ..., progress: _Optional[float] = ...) -> None: ...

class CreateConversionJobRequest(_message.Message):
    __slots__ = ("parent", "conversion_job_id", "conversion_job", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_JOB_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    conversion_job_id: str
    conversion_job: ConversionJob
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., conversion_job_id: _Optional[str] = ..., conversion_job: _Optional[_Union[ConversionJob, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetConversionJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListConversionJobsRequest(_message.Message):
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

class ListConversionJobsResponse(_message.Message):
    __slots__ = ("conversion_jobs", "next_page_token")
    CONVERSION_JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    conversion_jobs: _containers.RepeatedCompositeFieldContainer[ConversionJob]
    next_page_token: str
    def __init__(self, conversion_jobs: _Optional[_Iterable[_Union[ConversionJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelConversionJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteConversionJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchConversionJobRequest(_message.Message):
    __slots__ = ("name", "after_sequence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    after_sequence: int
    def __init__(self, name: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...
