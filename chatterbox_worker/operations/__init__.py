"""The operation registry: each operation of the job contract, its request model, and the
functions that run it.

:data:`OPERATIONS` is the one list of operations. :func:`parse_request`, :func:`run` and
:func:`stream` read it, and so does the handler's error ladder, so adding an operation
means one entry here and one module beside this one.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from chatterbox_worker.contract.errors import JobError
from chatterbox_worker.contract.request_schema import (
    DeleteVoiceRequest,
    ListVoicesRequest,
    SearchVoicesRequest,
    TTSRequest,
    UploadVoiceRequest,
    VoiceCloningRequest,
    VoiceConversionRequest,
    VoiceTransferRequest,
    validate_request,
)
from chatterbox_worker.pipeline.job_metrics import count_memory_retries
from chatterbox_worker.pipeline.speech import Progress
from chatterbox_worker.serving.worker import Worker
from chatterbox_worker.settings import get_settings

from . import cloning, conversion, tts, voices

RunFn = Callable[[Worker, Any, "Progress | None"], dict[str, Any]]
StreamFn = Callable[[Worker, Any], Iterator[dict[str, Any]]]
DEFAULT_OPERATION = "tts"


@dataclass(frozen=True)
class Operation:
    request_model: type[BaseModel]
    # One function, or one per value of the request's ``mode``.
    run: RunFn | Mapping[str, RunFn]
    # Operations that can send results as they are made; the others send their one result.
    stream: StreamFn | None = None

    def runner(self, request: Any) -> RunFn:
        return self.run[request.mode] if isinstance(self.run, Mapping) else self.run


OPERATIONS: dict[str, Operation] = {
    "tts": Operation(TTSRequest, run={"basic": tts.speak_whole, "streaming": tts.speak_windows,
                                      "streaming_voice_cloning": tts.speak_windows}, stream=tts.stream),
    "voice_cloning": Operation(VoiceCloningRequest, cloning.clone_voice),
    "upload_voice": Operation(UploadVoiceRequest, cloning.upload_voice),
    "list_local_voices": Operation(ListVoicesRequest, voices.list_voices),
    "list_voices": Operation(ListVoicesRequest, voices.list_voices),
    "search_local_voices": Operation(SearchVoicesRequest, voices.search_voices),
    "delete_voice": Operation(DeleteVoiceRequest, voices.delete_voice),
    "voice_conversion": Operation(VoiceConversionRequest, conversion.convert_voice),
    "voice_transfer": Operation(VoiceTransferRequest, conversion.transfer_voice),
}


@dataclass(frozen=True)
class ParsedJob:
    operation: Operation
    request: Any
    warnings: list[str]


def parse_request(raw: Any) -> ParsedJob:
    """Validate a job's ``input`` against its operation's request model."""
    if not isinstance(raw, dict):
        raise JobError("input", f"must be a JSON object, got {type(raw).__name__}")
    name = raw.get("operation", DEFAULT_OPERATION)
    if not isinstance(name, str) or name not in OPERATIONS:
        raise JobError("operation", f"unknown operation {name!r}; expected one of {', '.join(OPERATIONS)}")
    operation = OPERATIONS[name]
    request, warnings = validate_request(operation.request_model, raw,
                                         reject_unknown=get_settings().reject_unknown_fields)
    return ParsedJob(operation, request, warnings)


def run(worker: Worker, job: ParsedJob, progress: Progress | None = None) -> dict[str, Any]:
    """The job's one result; ``progress(done, total)`` hears about long multi-chunk jobs."""
    count_memory_retries()
    result = job.operation.runner(job.request)(worker, job.request, progress)
    if job.warnings:
        result["warnings"] = job.warnings
    return result


def stream(worker: Worker, job: ParsedJob) -> Iterator[dict[str, Any]]:
    """The job's results as they are made; the last item carries the metrics (and warnings)."""
    if job.operation.stream is None:
        yield run(worker, job)
        return
    count_memory_retries()
    for item in job.operation.stream(worker, job.request):
        if job.warnings and "metrics" in item:
            item["warnings"] = job.warnings
        yield item
