"""The persistent process behind 3D Slicer and other viewers: ``python -m medcnn.app.worker``.

Importing torch and loading the verified models take seconds; a viewer that paid them on every
click would feel broken. The worker pays them once, then answers requests one at a time for as
long as its parent keeps it. It never imports anything of Slicer: it is the engine's edge, like
the command line, and turns ``MedCNNError`` into messages and exit codes the same way.

Protocol: JSON lines. Every line the worker writes to stdout is one JSON object, flushed at
once; everything else (logging, stray prints of libraries) goes to stderr.

On start, at once (before the slow imports), the engine's vocabulary, so that a client need not
import the engine or repeat its names and numbers: the protocol version, the progress stages in
order with a title for each, and the exit codes by name::

    {"event": "hello", "protocol": 2,
     "stages": [{"name": "reading", "title": "Reading the scan"}, ...],
     "exit_codes": {"success": 0, "internal_error": 1, "usage": 2, ..., "cancelled": 130},
     "models": [{"id": "lung_nodule_ct", "name": ..., "version": ..., "task": ...,
                 "input": ..., "needs_point": true}, ...]}     # medcnn.catalog.model_list

then, once every installed model is loaded::

    {"event": "ready", "pid": 1234,
     "models": [{"id": "lung_nodule_ct", "name": ..., "version": ..., "weights_sha256": ...,
                 "threshold": ..., "needs_point": true}, {"id": "chest_xray_pneumonia", ...}],
     "model": {...the first of "models"...},
     "software": {"medcnn": ..., "monai": ..., "torch": ..., ...},
     "threading": {"threads": 2, "threads_source": "medcnn", "cpus": 2,
                   "variables": {"OMP_NUM_THREADS": {"value": "2", "source": "medcnn"}, ...},
                   "torch_imported_first": false}}          # medcnn.threads.in_force()

(``threading``: the threads torch computes with and the OpenMP settings in force, each with its
source, ``user`` or ``medcnn``; ``medcnn.threads`` says what MedCNN picks and why.)

or, when the engine cannot start (dependencies missing, model bundle failing its check)::

    {"event": "fatal", "message": "<one sentence>", "exit_code": 9}

after which the worker exits with that code.

Requests, one JSON object per stdin line::

    {"id": "7", "image": "/tmp/scan.nrrd", "point": [21.9, 120.5, -611.5], "lps": false,
     "out": "/tmp/results/7"}                        # optional: "series_uid": "1.2.3..."
    {"id": "9", "image": "/tmp/chest.nrrd", "out": "/tmp/results/9"}   # a radiograph: no point
                                                     # optional: "model": "chest_xray_pneumonia"
    {"id": "10", "image": "/data/series", "series_uid": "1.2.3...", "point": [...],
     "out": "/tmp/results/10", "dicom": true}        # the results as DICOM too (--dicom)

``dicom`` (a JSON boolean, default false) is the command line's ``--dicom``: the image must then
be the original DICOM series (a folder, with ``series_uid`` choosing among its series, or a
file), and the result's ``outputs`` also name the DICOM objects written in ``out``.

The input decides the model as on the command line (``medcnn.app.engine``); ``model`` names one.
    {"id": "8", "command": "quit"}                   # or end of stdin: exit 0

Answers, all carrying the request's ``id``, in this order::

    {"id": "7", "event": "progress", "stage": "reading", "fraction": 0.0}   # stages: the
    ...                                     # hello's (medcnn.stages), in order;
                                            # fraction is of the whole analysis, 0..1
    {"id": "7", "event": "result", "result": {...result.json...}}  # Result.to_json()
  or
    {"id": "7", "event": "error", "message": "<one sentence>", "exit_code": 8}

Exit codes are the engine's (``medcnn.errors``); an unexpected exception is exit code 1 and the
worker keeps serving. A line that is not a valid request is answered with exit code 2 (its
``id`` is null when it cannot be read). Cancelling is the parent's business: it kills the
worker's process group and starts a new worker for the next request.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from medcnn.catalog import model_list
from medcnn.errors import EXIT_CODES_BY_NAME, MedCNNError, disk_error
from medcnn.stages import STAGES
from medcnn.threads import in_force
from medcnn.volume import MAX_COORDINATE_MM

log = logging.getLogger("medcnn.app.worker")

INTERNAL_ERROR = 1
BAD_REQUEST = 2
PROTOCOL_VERSION = 2


class Channel:
    """The protocol's stdout: one JSON object a line, flushed, nothing else ever written to it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def send(self, **message: Any) -> None:
        self.stream.write(json.dumps(message, allow_nan=False) + "\n")
        self.stream.flush()


def claim_stdout() -> TextIO:
    """Keep the real stdout for the protocol and send file descriptor 1 to stderr, so that a
    library printing to stdout (Python or C) cannot corrupt the protocol stream."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return protocol


class BadRequest(ValueError):
    """A stdin line that is not a valid request; ``request_id`` is its id when readable."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


# Bounds on a request line, checked before it is parsed: a request is a few hundred characters.
MAX_LINE_CHARS = 65_536
MAX_NESTING = 8
MAX_TEXT_CHARS = 4096  # a path
MAX_ID_CHARS = 256
REQUEST_FIELDS = {
    "id",
    "command",
    "image",
    "point",
    "lps",
    "out",
    "series_uid",
    "model",
    "dicom",
}
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def read_lines(stream: TextIO, limit: int = MAX_LINE_CHARS) -> Iterator[str]:
    """The stream's lines, each cut to ``limit + 1`` characters: a longer line is not kept in
    memory whole (the rest is read and dropped), and ``parse_request`` refuses it."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith("\n"):
            while True:
                rest = stream.readline(limit)
                if not rest or rest.endswith("\n"):
                    break
        yield line


def nesting_depth(line: str) -> int:
    """How deeply the line's JSON arrays and objects nest, without parsing it."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub('""', line)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_request(line: str) -> tuple[str | None, dict]:
    """The request's id and content, every field checked for its type and bounds; raises
    ``BadRequest`` with a user sentence when the line is not a valid request."""
    if len(line) > MAX_LINE_CHARS:
        raise BadRequest(f"The request is longer than {MAX_LINE_CHARS} characters.")
    if nesting_depth(line) > MAX_NESTING:
        raise BadRequest(f"The request nests deeper than {MAX_NESTING} levels.")
    try:  # integers become floats: a 5,000-digit integer is then infinite, and refused below
        request = json.loads(line, parse_int=float, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise BadRequest(f"The request is not valid JSON ({error.msg}).") from None
    except (ValueError, RecursionError) as error:
        raise BadRequest(f"The request is not valid JSON ({error}).") from None
    if not isinstance(request, dict):
        raise BadRequest("The request must be a JSON object.")
    request_id = _request_id(request.get("id"))
    unknown = sorted(str(key)[:40] for key in set(request) - REQUEST_FIELDS)
    if unknown:
        raise BadRequest(
            f"The request has fields the worker does not know ({', '.join(unknown)}).", request_id
        )
    if request.get("command") is not None:
        if not isinstance(request["command"], str) or len(request["command"]) > MAX_ID_CHARS:
            raise BadRequest("The request's command must be a short string.", request_id)
        return request_id, request
    missing = [key for key in ("id", "image", "out") if request.get(key) is None]
    if missing:
        raise BadRequest(f"The request lacks {', '.join(missing)}.", request_id)
    checked = {
        "id": request_id,
        "image": _text(request, "image", "the path of the image", request_id),
        "out": _text(request, "out", "the path of the output folder", request_id),
        "point": _point(request.get("point"), request_id),
        "lps": request.get("lps", False),
        "dicom": request.get("dicom", False),
    }
    for flag in ("lps", "dicom"):
        if not isinstance(checked[flag], bool):
            raise BadRequest(
                f"The request's {flag} must be true or false (a JSON boolean).", request_id
            )
    for key, what in (("model", "a model's name"), ("series_uid", "a series UID")):
        if request.get(key) is not None:
            checked[key] = _text(request, key, what, request_id, limit=MAX_ID_CHARS)
    return request_id, checked


def _request_id(value: object) -> str | None:
    """The id as text: a string or a whole number (sent back as a string)."""
    if isinstance(value, str) and len(value) <= MAX_ID_CHARS:
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    if value is None:
        return None
    raise BadRequest(f"The request's id must be a string of at most {MAX_ID_CHARS} characters.")


def _text(
    request: dict, key: str, what: str, request_id: str | None, limit: int = MAX_TEXT_CHARS
) -> str:
    value = request[key]
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > limit
        or "\0" in value
        or not _encodable(value)
    ):
        raise BadRequest(
            f"The request's {key} must be {what}: a non-empty string of at most {limit} "
            "characters.",
            request_id,
        )
    return value


def _encodable(text: str) -> bool:
    """Whether a path can be given to the file system (no lone surrogates from JSON escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _point(value: object, request_id: str | None) -> list[float] | None:
    if value is None:
        return None
    if (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, float) and abs(v) <= MAX_COORDINATE_MM for v in value)
    ):
        return [float(v) for v in value]
    raise BadRequest(
        "The request's point must be a list of three finite numbers in millimetres (at most "
        f"{MAX_COORDINATE_MM:g} from the origin), or absent for a radiograph.",
        request_id,
    )


def serve(
    analyzer: Any,
    lines: Iterable[str],
    channel: Channel,
    error_types: tuple[type[BaseException], ...],
) -> int:
    """Answer requests until ``quit`` or the end of input; returns the exit status (0)."""
    for line in lines:
        if not line.strip():
            continue
        try:
            request_id, request = parse_request(line)
        except BadRequest as error:
            channel.send(
                id=error.request_id, event="error", message=str(error), exit_code=BAD_REQUEST
            )
            continue
        command = request.get("command")
        if command == "quit":
            log.info("quit requested")
            return 0
        if command is not None:
            channel.send(
                id=request_id,
                event="error",
                message=f"Unknown command {command!r}; the worker knows only 'quit'.",
                exit_code=BAD_REQUEST,
            )
            continue
        answer(analyzer, request_id, request, channel, error_types)
    return 0


def answer(
    analyzer: Any,
    request_id: str | None,
    request: dict,
    channel: Channel,
    error_types: tuple[type[BaseException], ...],
) -> None:
    """Run one analysis and send its progress and its result or error."""

    def progress(stage: str, fraction: float) -> None:
        channel.send(id=request_id, event="progress", stage=stage, fraction=float(fraction))

    try:
        options = {"series_uid": request["series_uid"]} if request.get("series_uid") else {}
        result = analyzer.analyze_file(
            request["image"],
            request.get("point"),
            request["out"],
            lps=request["lps"],
            progress=progress,
            model=request.get("model"),
            dicom=request["dicom"],
            **options,
        )
    except error_types as error:
        log.info("request %s: %s", request_id, error)
        channel.send(
            id=request_id,
            event="error",
            message=str(error),
            exit_code=int(getattr(error, "exit_code", INTERNAL_ERROR)),
        )
    except Exception as error:  # the worker outlives any one analysis
        output = disk_error(error)
        if output is not None:  # a full or read-only disk: the user's to fix, exit code 13
            log.info("request %s: %s", request_id, error)
            channel.send(
                id=request_id, event="error", message=str(output), exit_code=output.exit_code
            )
            return
        log.error("request %s failed unexpectedly:\n%s", request_id, traceback.format_exc())
        channel.send(
            id=request_id,
            event="error",
            message=f"Unexpected internal error ({type(error).__name__}: {error}); "
            "the worker's log (stderr) has the details.",
            exit_code=INTERNAL_ERROR,
        )
    else:
        channel.send(id=request_id, event="result", result=result.to_json())


def hello() -> dict[str, Any]:
    """The first line: what a client needs to know of the engine without importing it."""
    try:
        models = model_list()
    except MedCNNError:  # no bundle: the model load that follows says so, as "fatal"
        models = []
    return {
        "event": "hello",
        "protocol": PROTOCOL_VERSION,
        "stages": [{"name": stage.name, "title": stage.title} for stage in STAGES],
        "exit_codes": dict(EXIT_CODES_BY_NAME),
        "models": models,
    }


def load_analyzer(bundle: str | None, trusted: bool) -> tuple[Any, tuple, Callable[[], dict]]:
    """Import the engine and load every installed model: the slow part, done once."""
    from medcnn.app.analysis import software_versions
    from medcnn.app.engine import Engine
    from medcnn.errors import MedCNNError

    engine = Engine(bundle, trusted=trusted)
    engine.load_all()
    return engine, (MedCNNError,), software_versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medcnn.app.worker",
        description="Persistent MedCNN analysis process speaking JSON lines on stdin/stdout.",
    )
    parser.add_argument("--bundle", help="model bundle folder (default: the shipped one)")
    parser.add_argument(
        "--trust-bundle", action="store_true", help="allow a bundle other than the shipped one"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="medcnn.app.worker %(levelname)s: %(message)s"
    )
    channel = Channel(claim_stdout())
    channel.send(**hello())
    try:
        analyzer, error_types, software_versions = load_analyzer(args.bundle, args.trust_bundle)
    except ImportError as error:
        log.error("cannot import the engine:\n%s", traceback.format_exc())
        channel.send(
            event="fatal",
            message=f"The analysis engine cannot start because a Python package is missing "
            f"({error}); install MedCNN's dependencies and try again.",
            exit_code=INTERNAL_ERROR,
        )
        return INTERNAL_ERROR
    except Exception as error:
        exit_code = int(getattr(error, "exit_code", INTERNAL_ERROR))
        log.error("cannot load the model:\n%s", traceback.format_exc())
        channel.send(event="fatal", message=str(error), exit_code=exit_code)
        return exit_code
    models = analyzer.describe()
    log.info("ready: %s (pid %d)", ", ".join(m["id"] for m in models), os.getpid())
    threads = in_force()
    log.info(
        "computing with %s threads (%s)",
        threads.threads,
        ", ".join(f"{k}={v['value']}" for k, v in threads.variables.items()) or "torch's own",
    )
    log_missing_numpy_bridge()
    channel.send(
        event="ready",
        pid=os.getpid(),
        models=models,
        model=models[0],
        software=software_versions(),
        threading=threads.to_json(),
    )
    sys.stdin.reconfigure(errors="replace")  # type: ignore[union-attr]  # bytes that are not
    # UTF-8 become U+FFFD: the line is then refused or names no file, and the worker goes on
    return serve(analyzer, read_lines(sys.stdin), channel, error_types)


def log_missing_numpy_bridge() -> None:
    """Say in the log why NumPy printed a long warning as torch loaded, where this torch was
    built for NumPy 1 (3D Slicer for macOS: torch 2.2.2 beside NumPy 2): it is expected."""
    import numpy
    import torch

    from medcnn.tensors import numpy_bridge

    if not numpy_bridge():
        log.info(
            "torch %s has no NumPy bridge beside NumPy %s (it was built for NumPy 1): arrays "
            "are copied across, and NumPy's warning about it above is expected",
            torch.__version__,
            numpy.__version__,
        )


if __name__ == "__main__":
    sys.exit(main())
