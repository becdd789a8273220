"""The batch worker: claims a batch, scores its input lines in chunks through the same services
as the API (/v1/predictions, /v1/chat/completions, /v1/completions) and writes the results.

Each chunk's result lines are appended to a partial output and a partial error file, flushed to
disk, and only then recorded (lines done and both files' lengths) with the lease. A worker killed
at any point leaves at most a tail past the record: the next claim truncates both files to the
recorded lengths and goes on from the recorded line, so every input line appears exactly once."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.utils import timezone

from tunery.batches import lifecycle
from tunery.batches.models import Batch, BatchStatus
from tunery.core.errors import ApiError
from tunery.files import services as file_services
from tunery.files.models import File
from tunery.jobs.lifecycle import new_lease_owner
from tunery.serving import inputs
from tunery.serving import services as serving

log = logging.getLogger(__name__)

#: The endpoints a batch line may call (OpenAI's batch ``url``).
ENDPOINTS = ("/v1/predictions", "/v1/chat/completions", "/v1/completions")


def work_dir(batch_id: str) -> Path:
    return Path(settings.TUNERY_BATCH_WORK_DIR) / batch_id


def run_batch(batch_id: str) -> str:
    """Claim ``batch_id`` and score it to the end; its final status ("" if another worker has it)."""
    owner = new_lease_owner()
    batch = lifecycle.claim(batch_id, owner)
    if batch is None:
        return ""
    try:
        return _run(batch, owner)
    except lifecycle.LeaseLost:
        log.warning("batch %s: lease lost by %s, leaving it to its new owner", batch_id, owner)
        return ""


def _run(batch: Batch, owner: str) -> str:
    try:
        lines = _request_lines(batch.input_file)
    except OSError as exc:
        lifecycle.fail(batch.id, owner, "input_file_unreadable", f"The input file could not be read: {exc}")
        return BatchStatus.FAILED
    if not lines:
        lifecycle.fail(batch.id, owner, "empty_file", "The input file holds no request lines.")
        return BatchStatus.FAILED
    folder = work_dir(batch.id)
    folder.mkdir(parents=True, exist_ok=True)
    status = lifecycle.record_progress(batch.id, owner, total=len(lines))
    with (
        _resumed(folder / "output.jsonl", batch.output_bytes) as output,
        _resumed(folder / "errors.jsonl", batch.error_bytes) as errors,
    ):
        completed, failed, done = batch.completed, batch.failed, batch.lines_done
        chunk = max(1, settings.TUNERY_BATCH_CHUNK_LINES)
        expired = False
        while done < len(lines) and status != BatchStatus.CANCELLING:
            if _past_window(batch):
                expired = True
                break
            for ok, record in score_chunk(batch, lines[done : done + chunk]):
                (output if ok else errors).write(json.dumps(record).encode() + b"\n")
                completed, failed = completed + ok, failed + (not ok)
            done = min(done + chunk, len(lines))
            _flush(output)
            _flush(errors)
            status = lifecycle.record_progress(
                batch.id,
                owner,
                lines_done=done,
                completed=completed,
                failed=failed,
                output_bytes=output.tell(),
                error_bytes=errors.tell(),
            )
        if expired:  # OpenAI's way: the lines not reached are errors "batch_expired"
            for number, raw in lines[done:]:
                errors.write(json.dumps(_expired_line(number, raw)).encode() + b"\n")
            failed += len(lines) - done
            _flush(errors)
            lifecycle.record_progress(batch.id, owner, lines_done=len(lines), failed=failed, error_bytes=errors.tell())
    if expired:
        final = lifecycle.expire(batch.id, owner, lambda: _publish_files(batch, folder, completed, failed))
        shutil.rmtree(folder, ignore_errors=True)
        return final
    lifecycle.finalize(batch.id, owner)
    final = lifecycle.finish(batch.id, owner, lambda: _publish_files(batch, folder, completed, failed))
    shutil.rmtree(folder, ignore_errors=True)
    return final


def _past_window(batch: Batch) -> bool:
    return batch.expires_at is not None and timezone.now() >= batch.expires_at


def _expired_line(number: int, raw: bytes) -> dict[str, Any]:
    try:
        request = json.loads(raw)
        custom_id = request.get("custom_id") if isinstance(request, dict) else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        custom_id = None
    message = f"line {number}: the batch expired (its completion window ended) before this line was scored."
    return _result(custom_id, None, {"code": "batch_expired", "message": message})


def _request_lines(input_file: File) -> list[tuple[int, bytes]]:
    """(line number from 1, bytes) of each non-blank input line."""
    with input_file.content.open("rb") as stream:
        return [(number, raw) for number, raw in enumerate(stream, start=1) if raw.strip()]


class _resumed:
    """A partial result file opened for appending after its first ``length`` bytes (what the
    batch's progress record vouches for); anything past them is an unrecorded tail, cut off."""

    def __init__(self, path: Path, length: int) -> None:
        self.path, self.length = path, length

    def __enter__(self) -> IO[bytes]:
        self.stream = open(self.path, "a+b")
        self.stream.seek(0, os.SEEK_END)
        if self.stream.tell() < self.length:
            self.stream.close()
            raise OSError(f"the partial file {self.path.name} is shorter than its recorded progress")
        self.stream.truncate(self.length)
        self.stream.seek(self.length)
        return self.stream

    def __exit__(self, *_: object) -> None:
        self.stream.close()


def _flush(stream: IO[bytes]) -> None:
    stream.flush()
    os.fsync(stream.fileno())


def _publish_files(batch: Batch, folder: Path, completed: int, failed: int) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, count, field in (("output", completed, "output_file"), ("errors", failed, "error_file")):
        if count:
            fields[field] = file_services.save_generated_file(
                tenant=batch.tenant,
                filename=f"{batch.id}_{name}.jsonl",
                purpose=File.Purpose.BATCH_OUTPUT,
                source=folder / f"{name}.jsonl",
            )
    return fields


# -- lines -----------------------------------------------------------------------------------

Outcome = tuple[bool, dict[str, Any]]


def score_chunk(batch: Batch, lines: list[tuple[int, bytes]]) -> list[Outcome]:
    """(succeeded, result line) for each input line, in order: OpenAI's batch output shape with
    the response of the line's endpoint, or the error that kept it from one. Prediction lines are
    answered together (serving.predict_many), so the runtime scores them in batches."""
    outcomes: list[Outcome | None] = []
    pending: list[tuple[int, int, str, inputs.PredictionRequest]] = []
    for number, raw in lines:
        try:
            custom_id, body = _parse_line(raw, batch.endpoint)
        except _LineError as exc:
            outcomes.append(
                (False, _result(exc.custom_id, None, {"code": exc.code, "message": f"line {number}: {exc}"}))
            )
            continue
        if batch.endpoint == "/v1/predictions":
            try:
                pending.append((len(outcomes), number, custom_id, inputs.prediction_request(body)))
                outcomes.append(None)
            except ApiError as exc:
                outcomes.append(_failure(custom_id, number, exc))
        else:
            outcomes.append(_generated(batch, number, custom_id, body))
    for (slot, number, custom_id, _), answer in zip(pending, _predictions(batch, [p[3] for p in pending])):
        outcomes[slot] = (
            _failure(custom_id, number, answer)
            if isinstance(answer, Exception)
            else (True, _result(custom_id, _response(200, answer), None))
        )
    return [outcome for outcome in outcomes if outcome is not None]


def _predictions(batch: Batch, requests: list[inputs.PredictionRequest]) -> list[dict[str, Any] | Exception]:
    if not requests:
        return []
    try:
        return list(serving.predict_many(tenant=batch.tenant, requests=requests))
    except Exception as exc:  # not the lines' fault (the runtime broke): each line reports it
        log.exception("batch %s: scoring a chunk failed", batch.id)
        return [exc] * len(requests)


def _generated(batch: Batch, number: int, custom_id: str, body: dict[str, Any]) -> Outcome:
    chat = batch.endpoint == "/v1/chat/completions"
    try:
        answer = serving.generate(tenant=batch.tenant, body={**body, "stream": False}, chat=chat)
    except Exception as exc:
        return _failure(custom_id, number, exc)
    return True, _result(custom_id, _response(200, answer), None)


def _failure(custom_id: str, number: int, exc: Exception) -> Outcome:
    if not isinstance(exc, ApiError):
        log.error("line %s failed: %s: %s", number, type(exc).__name__, exc)
        return False, _result(custom_id, _response(500, None), {"code": "server_error", "message": f"line {number}"})
    error = {"message": exc.message, "type": "invalid_request_error", "param": exc.param, "code": exc.code}
    message = f"line {number}: {exc.message}"
    return False, _result(
        custom_id, _response(exc.status_code, {"error": error}), {"code": exc.code, "message": message}
    )


class _LineError(Exception):
    def __init__(self, code: str, message: str, custom_id: Any = None) -> None:
        super().__init__(message)
        self.code, self.custom_id = code, custom_id


def _parse_line(raw: bytes, endpoint: str) -> tuple[str, dict[str, Any]]:
    """(custom_id, body) of a well-formed request line for ``endpoint``."""
    try:
        request = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _LineError("invalid_json", f"not JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise _LineError("invalid_request", "A batch line must be a JSON object.")
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _LineError("missing_custom_id", "custom_id must be a non-empty string.")
    if request.get("method", "POST") != "POST":
        raise _LineError("invalid_method", "method must be POST.", custom_id)
    if request.get("url") != endpoint:
        raise _LineError(
            "invalid_url", f"url must be this batch's endpoint {endpoint}, not {request.get('url')!r}.", custom_id
        )
    if not isinstance(request.get("body"), dict):
        raise _LineError("invalid_body", "body must be a JSON object.", custom_id)
    return custom_id, request["body"]


def _response(status_code: int, body: Any) -> dict[str, Any]:
    return {"status_code": status_code, "request_id": f"req_{secrets.token_hex(12)}", "body": body}


def _result(custom_id: Any, response: dict[str, Any] | None, error: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id, "response": response, "error": error}
