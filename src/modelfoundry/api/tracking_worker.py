"""A child process that imports MLflow and opens the tracking store while this process trains, then logs the run.

Importing MLflow and opening its store cost ~2 s of a ~6 s `foundry run`; the child does it on another core
while this process loads torch and trains, and at the end logs and registers the run exactly as
`registration.track_run` does in-process (it calls it), answering with the result or the same FoundryError.
It is only started where it pays: tracking on and MLflow not loaded here yet (a fresh process, as the CLI).
Anything going wrong with the child itself (it cannot start, dies, answers garbage) falls back to logging
in-process, and `close` always reaps it, so no process outlives the run. The child also exits by itself when
this process goes away (its request pipe closes), and ignores Ctrl-C, which the parent handles.

Protocol: on the child's stdin, the store URI as a JSON line at once (never on its command line, which other
users can read), later one pickled request, then EOF (EOF alone means "nothing to log"); on its stdout, one
pickled ("ok", result) or ("error", FoundryError). What MLflow prints in the child is kept and
written to this process's stderr when the answer comes, where an in-process call would have printed it.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from modelfoundry.config import TrackingConfig


class TrackingWorker:
    """Handle on the child: `track_run` sends the request and returns its answer; `close` ends the child."""

    def __init__(self, process: subprocess.Popen, log: IO[bytes]):
        self.process = process
        self.log = log
        self.answered = False

    @classmethod
    def start(cls, tracking: TrackingConfig) -> TrackingWorker | None:
        """Start the child for a run tracked with `tracking`; None where it would not pay or cannot start."""
        if not tracking.enabled or "mlflow" in sys.modules:  # loaded here already: nothing left to overlap
            return None
        return cls.launch(tracking.uri)

    @classmethod
    def launch(cls, uri: str | None) -> TrackingWorker | None:
        """Start the child for the store at `uri` (None: found as in-process); None if it cannot start."""
        log = None
        try:
            log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child; close() closes it
            process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        except (OSError, ValueError):  # no temporary directory, no more processes, no interpreter to run
            if log is not None:
                log.close()
            return None
        worker = cls(process, log)
        try:  # the URI goes through the pipe, not the command line, which any local user can read (ps)
            assert process.stdin is not None
            process.stdin.write(json.dumps(uri).encode() + b"\n")
            process.stdin.flush()
        except OSError:
            worker.close()
            return None
        return worker

    def track_run(self, run_path: Path, config: Any, metrics: dict[str, float], *,
                  parent_version: str | None = None, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
        """What `registration.track_run` returns or raises, computed in the child (in-process if it fails)."""
        request = {"run_path": Path(run_path), "config": config, "metrics": dict(metrics),
                   "parent_version": parent_version, "recipe": recipe}
        try:
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write(pickle.dumps(request))
            self.process.stdin.close()
            status, value = pickle.loads(self.process.stdout.read())
            self.answered = True
        except (OSError, EOFError, ValueError, TypeError, pickle.PickleError, AttributeError, ImportError):
            status, value = "lost", None  # the child died or could not answer: log here, as without it
        finally:
            self.close()
        if status == "ok":
            return value
        if status == "error":
            raise value
        from modelfoundry.api.registration import track_run

        return track_run(run_path, config, metrics, parent_version=parent_version, recipe=recipe)

    def close(self) -> None:
        """End the child, at once unless it has answered (a run that failed or was interrupted logs nothing; an
        interrupted logging call stops as it would in-process), pass on what it printed, release its pipes.
        Safe to call more than once."""
        if not self.answered and self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()
        if not self.log.closed:
            self.log.seek(0)
            printed = self.log.read().decode(errors="replace")
            self.log.close()
            if printed and self.process.returncode == 0:
                sys.stderr.write(printed)  # MLflow's own output, shown where an in-process call shows it


def warm(uri: str | None) -> None:
    """Import what logging a run needs and open the store when it exists already (a new SQLite store is only
    created when a run is logged, as in-process: a run that fails before leaves no foundry.db behind).
    Errors are left for the logging call itself to meet and report."""
    try:
        from mlflow.entities import Metric, Param  # noqa: F401 - what log_run imports

        from modelfoundry import registry  # noqa: F401 - tag_version, for compressed models
        from modelfoundry.tracking import _sqlite_path, client, resolve_uri

        store = _sqlite_path(resolve_uri(uri))
        if store is not None and store.is_file():
            mlf = client(uri)
            mlf.search_experiments(max_results=1)
            mlf.search_registered_models(max_results=1)
    except Exception:  # noqa: BLE001, S110 - the request meets (and reports) the same failure
        pass


def main() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then ends this child
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to the log, never into the answer
    stdin = sys.stdin.buffer
    first = stdin.readline()
    if not first:
        os._exit(0)
    warm(json.loads(first))
    request = stdin.read()
    if not request:  # the run ended without logging (failed, interrupted) or the parent is gone
        os._exit(0)
    from modelfoundry.api.registration import track_run
    from modelfoundry.errors import FoundryError

    args = pickle.loads(request)  # written by the parent process (our stdin is its pipe), never by anyone else
    try:
        reply: tuple[str, Any] = ("ok", track_run(args.pop("run_path"), args.pop("config"), args.pop("metrics"),
                                                   **args))
    except FoundryError as exc:
        reply = ("error", exc)
    answer.write(pickle.dumps(reply))
    answer.close()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)  # skip tearing down MLflow and SQLAlchemy: the parent is waiting for this process to end


if __name__ == "__main__":
    main()
