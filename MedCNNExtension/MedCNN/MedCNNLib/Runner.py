"""The background process that runs the analysis, so that Slicer's main thread never does.

``InferenceRunner`` is the small interface the logic needs; ``WorkerRunner`` implements it with
one persistent ``python -m medcnn.app.worker`` process (see that module for the JSON-lines
protocol), started on the first request (or earlier, by ``start``) and reused for the next ones,
so importing torch and loading the models are paid once. Cancelling kills the worker's whole
process group; the next request starts a fresh worker, as it does after the worker died.

No Qt and no MRML here: the runner's reader threads only queue what the worker says, and the
caller's thread (Slicer's main thread, through a timer) takes the events with ``poll``.

The engine's vocabulary, its progress stages, exit codes and installed models, is not repeated
here: the worker's first line (``hello``) states it, and ``EngineHello`` keeps it for the logic.
Only what the runner says on its own before any engine has spoken is defined here: the
``starting`` stage, and the codes of a worker that could not be started or was cancelled while
starting (the tests hold these to ``medcnn.errors``).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

PROTOCOL_VERSION = 2  # the worker protocol this runner speaks
STARTING_STAGE = "starting"
STARTING_TITLE = "Starting the analysis engine (first use loads the model)"
# The runner's own verdicts, used until the engine's hello replaces them.
RUNNER_EXIT_CODES = {"internal_error": 1, "cancelled": 130}

log = logging.getLogger("MedCNN.Runner")


@dataclass(frozen=True)
class AnalysisRequest:
    """One scan or radiograph file to analyse. ``point`` is in the file's world coordinates
    (RAS mm), or None for a model that judges the whole image (a radiograph); ``model`` names
    the model to use, or None to let the engine choose by the input (a point: the CT model).
    With ``dicom`` the image is the original DICOM series (a folder, ``seriesUid`` choosing
    its series, or one file) and the engine writes the results as DICOM objects too."""

    image: str
    point: tuple[float, float, float] | None
    outDir: str
    lps: bool = False
    model: str | None = None
    seriesUid: str | None = None
    dicom: bool = False

    def toMessage(self, requestId: str) -> dict:
        """The worker's request line (protocol 2): no ``point`` key when there is none, and
        ``series_uid`` and ``dicom`` only when given."""
        message: dict = {"id": requestId, "image": str(self.image)}
        if self.point is not None:
            message["point"] = [float(v) for v in self.point]
        message["lps"] = bool(self.lps)
        message["out"] = str(self.outDir)
        if self.model:
            message["model"] = str(self.model)
        if self.seriesUid:
            message["series_uid"] = str(self.seriesUid)
        if self.dicom:
            message["dicom"] = True
        return message


@dataclass(frozen=True)
class EngineModel:
    """An installed model as the engine's hello describes it."""

    id: str
    name: str
    version: str = ""
    task: str = ""
    input: str = ""
    needsPoint: bool = True

    @classmethod
    def fromMessage(cls, content: dict) -> EngineModel:
        return cls(
            id=str(content["id"]),
            name=str(content.get("name") or content["id"]),
            version=str(content.get("version") or ""),
            task=str(content.get("task") or ""),
            input=str(content.get("input") or ""),
            needsPoint=bool(content.get("needs_point", True)),
        )

    @property
    def title(self) -> str:
        """How a model selector shows it: its name and version."""
        return f"{self.name} {self.version}".strip()


@dataclass
class EngineHello:
    """What the engine said of itself: its protocol version, its stages (name to title, in
    order), its exit codes by name and its installed models. Until a worker has said hello,
    only the runner's own stage and codes are known, and no model."""

    protocol: int | None = None
    stageTitles: dict[str, str] = field(default_factory=lambda: {STARTING_STAGE: STARTING_TITLE})
    exitCodes: dict[str, int] = field(default_factory=lambda: dict(RUNNER_EXIT_CODES))
    models: list[EngineModel] = field(default_factory=list)

    @classmethod
    def fromMessage(cls, content: dict) -> EngineHello:
        hello = cls(protocol=content.get("protocol"))
        for stage in content.get("stages") or []:
            hello.stageTitles[str(stage["name"])] = str(stage.get("title") or stage["name"])
        codes = content.get("exit_codes") or {}
        hello.exitCodes.update({str(name): int(code) for name, code in codes.items()})
        hello.models = [
            EngineModel.fromMessage(model)
            for model in content.get("models") or []
            if isinstance(model, dict) and model.get("id")
        ]
        return hello

    def modelById(self, modelId: str | None) -> EngineModel | None:
        return next((model for model in self.models if model.id == modelId), None)

    @property
    def stages(self) -> list[str]:
        """The engine's stage names in order (after the runner's own ``starting``)."""
        return [name for name in self.stageTitles if name != STARTING_STAGE]

    def exitCode(self, name: str) -> int:
        """The engine's exit code of a failure kind (``"cancelled"``, ``"not_ct"``...); an
        unknown kind is an internal error."""
        return self.exitCodes.get(name, self.exitCodes["internal_error"])

    def stageTitle(self, name: str) -> str:
        return self.stageTitles.get(name, name.capitalize())


@dataclass(frozen=True)
class RunnerEvent:
    """What the runner reports about a job: ``kind`` is "progress", "result" or "error"."""

    kind: str
    stage: str = ""
    fraction: float = 0.0
    result: dict | None = None
    message: str = ""
    exitCode: int = 0

    @property
    def final(self) -> bool:
        return self.kind in ("result", "error")


class InferenceJob(Protocol):
    """One submitted request. ``poll`` never blocks; after the final event it returns []."""

    @property
    def done(self) -> bool: ...

    def poll(self) -> list[RunnerEvent]: ...

    def cancel(self) -> None: ...


class InferenceRunner(Protocol):
    """Runs requests one at a time in the background; ``hello`` is the engine's vocabulary.
    ``start`` starts the engine ahead of the first request and ``update`` takes what it said
    since (its hello: the installed models), so a panel can offer the models before a click."""

    hello: EngineHello

    def start(self) -> None: ...

    def update(self) -> None: ...

    def submit(self, request: AnalysisRequest) -> InferenceJob: ...

    def shutdown(self) -> None: ...


class RunnerBusyError(RuntimeError):
    """A request was submitted while another one is still running."""


def defaultPythonExecutable() -> str:
    """Slicer's own Python launcher when running inside Slicer, else this interpreter."""
    launcher = shutil.which("PythonSlicer")
    return launcher or sys.executable


def engineSearchPath() -> list[str]:
    """Where the engine package ``medcnn`` lies: the copy installed beside the module
    (``MedCNNEngine/`` in Slicer's qt-scripted-modules), or ``src/`` of a source checkout."""
    here = Path(__file__).resolve().parent
    candidates = [
        here.parent / "MedCNNEngine",  # installed extension
        here.parents[2] / "src",  # source checkout: MedCNNExtension/MedCNN/MedCNNLib
    ]
    return [str(path) for path in candidates if (path / "medcnn" / "app" / "worker.py").exists()]


def workerEnvironment(extraPath: list[str]) -> dict[str, str]:
    """Slicer's environment with the engine on the path. Nothing about threads is set here: the
    worker chooses its threads and how they wait at ``import medcnn`` (``medcnn.threads``), as
    every front end's worker does, and keeps any ``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``... the
    user set for Slicer; its ready line says what it uses (``WorkerRunner.threading``)."""
    env = dict(os.environ)
    paths = list(extraPath)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class _Message:
    generation: int
    content: dict = field(default_factory=dict)
    eof: bool = False
    returnCode: int | None = None


class WorkerJob:
    """A request being answered by the worker; its events come through the runner."""

    def __init__(self, runner: WorkerRunner, requestId: str) -> None:
        self.runner = runner
        self.requestId = requestId
        self._events: list[RunnerEvent] = []
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def poll(self) -> list[RunnerEvent]:
        if not self._done:
            self.runner._dispatch()
        events, self._events = self._events, []
        return events

    def cancel(self) -> None:
        if self._done:
            return
        self.runner._killWorker()
        self._finish(
            RunnerEvent(
                "error",
                message="The analysis was cancelled.",
                exitCode=self.runner.hello.exitCode("cancelled"),
            )
        )

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> list[RunnerEvent]:
        """Poll until the job is done (for scripts and tests; a viewer polls from a timer)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events: list[RunnerEvent] = []
        while True:
            events.extend(self.poll())
            if self._done:
                return events
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the analysis did not finish within {timeout} s")
            time.sleep(interval)

    def _add(self, event: RunnerEvent) -> None:
        if self._done:
            return
        self._events.append(event)
        if event.final:
            self._done = True

    def _finish(self, event: RunnerEvent) -> None:
        self._add(event)
        self._done = True


class WorkerRunner:
    """``InferenceRunner`` backed by one persistent ``python -m medcnn.app.worker`` process.

    ``command`` replaces the worker command line (tests use it to run stand-ins).
    """

    def __init__(
        self,
        pythonExecutable: str | None = None,
        command: list[str] | None = None,
        extraPythonPath: list[str] | None = None,
        stderrLines: int = 200,
    ) -> None:
        python = pythonExecutable or defaultPythonExecutable()
        self.command = command or [python, "-u", "-m", "medcnn.app.worker"]
        self.extraPythonPath = engineSearchPath() if extraPythonPath is None else extraPythonPath
        self.model: dict | None = None  # the first of ``models``
        self.models: list[dict] = []  # the loaded models, as the worker's ready line lists them
        self.software: dict | None = None
        self.threading: dict | None = None  # the ready line's: threads and OpenMP settings
        self.hello = EngineHello()  # kept across restarts: the engine stays the same
        self._process: subprocess.Popen | None = None
        self._generation = 0
        self._messages: queue.Queue[_Message] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderrLines)
        self._ids = itertools.count(1)
        self._job: WorkerJob | None = None
        self._lock = threading.Lock()

    # -- the public interface -------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs (the same across reused requests)."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def stderrTail(self) -> list[str]:
        return list(self._stderr)

    def start(self) -> None:
        """Start the worker now unless it runs: its hello lists the installed models at once,
        and it loads them while the user places points, so the first click does not wait."""
        if not self.running:
            self._startWorker()

    def update(self) -> None:
        """Take what the worker said that no job asked for (its hello and ready lines); a job's
        ``poll`` does the same."""
        self._dispatch()

    def submit(self, request: AnalysisRequest) -> WorkerJob:
        if self._job is not None and not self._job.done:
            raise RunnerBusyError("An analysis is already running; wait for it or cancel it.")
        requestId = str(next(self._ids))
        job = WorkerJob(self, requestId)
        self._job = job
        if not self.running:
            self._startWorker()
            job._add(RunnerEvent("progress", stage=STARTING_STAGE, fraction=0.0))
            if self._process is None:  # could not start: the queued message says why
                return job
        line = json.dumps(request.toMessage(requestId))
        try:
            self._process.stdin.write(line + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            # The worker died before reading; its end of output will report why.
            log.warning("could not send the request to the worker")
        return job

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the worker to quit, then make sure it is gone."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                process.stdin.write(json.dumps({"id": "quit", "command": "quit"}) + "\n")
                process.stdin.flush()
                process.wait(timeout=timeout)
            except (BrokenPipeError, OSError, ValueError, subprocess.TimeoutExpired):
                pass
        self._killWorker()

    # -- the worker process ----------------------------------------------------------------

    def _startWorker(self) -> None:
        self._killWorker()
        self._generation += 1
        self._stderr.clear()
        self.model = None
        self.models = []
        self.threading = None
        options: dict = {}
        if os.name == "posix":
            options["start_new_session"] = True  # its own process group, killed as a whole
        else:
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        log.info("starting the analysis worker: %s", " ".join(self.command))
        try:
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                env=workerEnvironment(self.extraPythonPath),
                **options,
            )
        except OSError as error:
            self._process = None
            self._messages.put(
                _Message(
                    self._generation,
                    {
                        "event": "fatal",
                        "message": f"The analysis process could not be started ({error}).",
                        "exit_code": self.hello.exitCode("internal_error"),
                    },
                )
            )
            return
        stderrReader = threading.Thread(
            target=self._readStderr, args=(self._process,), daemon=True, name="MedCNN-err"
        )
        stderrReader.start()
        threading.Thread(
            target=self._readStdout,
            args=(self._process, self._generation, stderrReader),
            daemon=True,
            name="MedCNN-out",
        ).start()

    def _readStdout(
        self, process: subprocess.Popen, generation: int, stderrReader: threading.Thread
    ) -> None:
        for line in process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                content = json.loads(line)
            except json.JSONDecodeError:
                log.warning("worker wrote a line that is not JSON: %s", line[:200])
                continue
            if isinstance(content, dict):
                self._messages.put(_Message(generation, content))
        try:
            returnCode = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            returnCode = None
        stderrReader.join(timeout=2)  # so that the death report can quote the last log line
        self._messages.put(_Message(generation, eof=True, returnCode=returnCode))

    def _readStderr(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            line = line.rstrip()
            if line:
                self._stderr.append(line)
                log.debug("worker: %s", line)

    def _killWorker(self) -> None:
        """End the worker and everything it started (its process group)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                if os.name == "posix":
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    subprocess.run(
                        ["taskkill", "/F", "/T", "/PID", str(process.pid)],
                        capture_output=True,
                        check=False,
                    )
            except (ProcessLookupError, PermissionError):
                pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        for stream in (process.stdin, process.stdout, process.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        # messages of a killed worker are stale: the generation moves on
        self._generation += 1

    def _dispatch(self) -> None:
        """Hand the queued worker messages to the current job (caller's thread)."""
        with self._lock:
            while True:
                try:
                    message = self._messages.get_nowait()
                except queue.Empty:
                    return
                if message.generation != self._generation:
                    continue
                self._handle(message)

    def _handle(self, message: _Message) -> None:
        job = self._job
        if message.eof:
            self._process = None
            if job is not None and not job.done:
                job._finish(self._deathEvent(message.returnCode))
            return
        content = message.content
        event = content.get("event")
        if event == "hello":
            self.hello = EngineHello.fromMessage(content)
            if self.hello.protocol != PROTOCOL_VERSION:
                log.warning(
                    "the worker speaks protocol %s, this runner %s",
                    self.hello.protocol,
                    PROTOCOL_VERSION,
                )
            return
        if event == "ready":
            self.models = [m for m in content.get("models") or [] if isinstance(m, dict)]
            self.model = content.get("model") or (self.models[0] if self.models else None)
            self.software = content.get("software")
            self.threading = content.get("threading")
            if self.threading:
                log.info(
                    "the worker computes with %s threads (%s)",
                    self.threading.get("threads"),
                    self.threading.get("variables"),
                )
            return
        if event == "fatal":
            if job is not None and not job.done:
                job._finish(
                    RunnerEvent(
                        "error",
                        message=str(content.get("message")),
                        exitCode=self._exitCode(content),
                    )
                )
            return
        if job is None or job.done or content.get("id") != job.requestId:
            return
        if event == "progress":
            job._add(
                RunnerEvent(
                    "progress",
                    stage=str(content.get("stage", "")),
                    fraction=float(content.get("fraction", 0.0)),
                )
            )
        elif event == "result":
            job._add(RunnerEvent("result", result=content.get("result") or {}))
        elif event == "error":
            job._add(
                RunnerEvent(
                    "error",
                    message=str(content.get("message")),
                    exitCode=self._exitCode(content),
                )
            )

    def _exitCode(self, content: dict) -> int:
        return int(content.get("exit_code", self.hello.exitCode("internal_error")))

    def _deathEvent(self, returnCode: int | None) -> RunnerEvent:
        last = next((line for line in reversed(self._stderr) if line.strip()), "")
        detail = f": {last}" if last else ""
        return RunnerEvent(
            "error",
            message=f"The analysis process stopped unexpectedly (exit code {returnCode}){detail}. "
            "Press Analyze again to restart it.",
            exitCode=self.hello.exitCode("internal_error"),
        )
