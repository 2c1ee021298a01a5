import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from tuneforge.common.v1 import common_pb2 as _common_pb2
from tuneforge.inference.v1 import inference_service_pb2 as _inference_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scorer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORER_UNSPECIFIED: _ClassVar[Scorer]
    EXACT_MATCH: _ClassVar[Scorer]
    CONTAINS: _ClassVar[Scorer]
    JSON_VALID: _ClassVar[Scorer]
SCORER_UNSPECIFIED: Scorer
EXACT_MATCH: Scorer
CONTAINS: Scorer
JSON_VALID: Scorer

class Evaluation(_message.Message):
    __slots__ = ("name", "model", "adapter", "dataset", "split", "scorers", "max_rows", "parameters", "backend", "state", "error", "report", "create_time", "end_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Evaluation.State]
        PENDING: _ClassVar[Evaluation.State]
        RUNNING: _ClassVar[Evaluation.State]
        SUCCEEDED: _ClassVar[Evaluation.State]
        FAILED: _ClassVar[Evaluation.State]
    STATE_UNSPECIFIED: Evaluation.State
    PENDING: Evaluation.State
    RUNNING: Evaluation.State
    SUCCEEDED: Evaluation.State
    FAILED: Evaluation.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    adapter: str
    dataset: str
    split: str
    scorers: _containers.RepeatedScalarFieldContainer[Scorer]
    max_rows: int
    parameters: _common_pb2.GenerationParameters
    backend: _inference_service_pb2.Backend
    state: Evaluation.State
    error: _status_pb2.Status
    report: EvaluationReport
    create_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., adapter: _Optional[str] = ..., dataset: _Optional[str] = ..., split: _Optional[str] = ..., scorers: _Optional[_Iterable[_Union[Scorer, str]]] = ..., max_rows: _Optional[int] = ..., parameters: _Optional[_Union[_common_pb2.GenerationParameters, _Mapping]] = ..., backend: _Optional[_Union[_inference_service_pb2.Backend, str]] = ..., state: _Optional[_Union[Evaluation.State, str]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., report: _Optional[_Union[EvaluationReport, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("row_count", "scores", "tokens_per_second", "seconds", "samples", "artifact")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    row_count: int
    scores: _containers.ScalarMap[str, float]
    tokens_per_second: float
    seconds: float
    samples: _containers.RepeatedCompositeFieldContainer[EvaluationSample]
    artifact: _common_pb2.ArtifactRef
    def __init__(self, row_count: _Optional[int] = ..., scores: _Optional[_Mapping[str, float]] = ..., tokens_per_second: _Optional[float] = ..., seconds: _Optional[float] = ..., samples: _Optional[_Iterable[_Union[EvaluationSample, _Mapping]]] = ..., artifact: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

class EvaluationSample(_message.Message):
    __slots__ = ("line", "prompt", "reference", "answer", "passed")
    class PassedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    LINE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    line: int
    prompt: str
    reference: str
    answer: str
    passed: _containers.ScalarMap[str, bool]
    def __init__(self, line: _Optional[int] = ..., prompt: _Optional[str] = ..., reference: _Optional[str] = ..., answer: _Optional[str] = ..., passed: _Optional[_Mapping[str, bool]] = ...) -> None: ...

class CreateEvaluationRequest(_message.Message):
    __slots__ = ("parent", "evaluation_id", "evaluation", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    evaluation_id: str
    evaluation: Evaluation
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., evaluation_id: _Optional[str] = ..., evaluation: _Optional[_Union[Evaluation, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetEvaluationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListEvaluationsRequest(_message.Message):
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

class ListEvaluationsResponse(_message.Message):
    __slots__ = ("evaluations", "next_page_token")
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    evaluations: _containers.RepeatedCompositeFieldContainer[Evaluation]
    next_page_token: str
    def __init__(self, evaluations: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
