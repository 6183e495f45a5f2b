"""LocalProcessBackend: the seed's local strategy, "stop the running Python process and restart
with a previous version of the code".

It exports the version's git commit from a repository into ``<state_dir>/versions/<sha>``,
starts the configured command there with PORT, APP_VERSION and ROLLBACK set, stops the process
it replaces (TERM, wait, KILL) and waits until the new one listens. The pid and what it runs are
kept in ``<state_dir>/<environment>.json`` so that an opsweb restart neither loses the process
nor starts a second one.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import math
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestration.base import (
    DeployBackend,
    DeployError,
    DeployRequest,
    DeployResult,
    DeployStopped,
    Progress,
    SettingsError,
    no_progress,
    register,
)

DEFAULT_COMMAND = ["python", "main_orchestrator.py"]

log = logging.getLogger(__name__)


@register
class LocalProcessBackend(DeployBackend):
    name = "local"
    label = "Local process"
    runs_on_worker = True

    @classmethod
    def alarm_problem(cls, i: int, alarm: Mapping[str, Any], *, allow: Any = None) -> list[str]:
        """A local alarm reads a number from an HTTP endpoint: its url (within ``allow``), the
        field to read and the threshold above which it is ALARM."""
        from orchestration import outbound

        problems = []
        url = str(alarm.get("url", ""))
        if not url.startswith(("http://", "https://")):
            problems.append(f"Alarm {i}: url is the http(s) address of a JSON metric.")
        elif problem := outbound.url_problem(url, allow=allow, what=f"Alarm {i}'s url"):
            problems.append(problem)
        if not alarm.get("field"):
            problems.append(f"Alarm {i}: field names the number to read, e.g. 'errors'.")
        try:
            # NaN and infinity compare so that the alarm never fires; a huge integer overflows
            # a float.
            finite = math.isfinite(float(alarm.get("threshold")))
        except (TypeError, ValueError, OverflowError):
            finite = False
        if not finite:
            problems.append(f"Alarm {i}: threshold is a number (above it is ALARM).")
        return problems

    @classmethod
    def read_alarms(
        cls, alarms: list[Mapping[str, Any]], *, settings: Mapping[str, Any], allow: Any = None
    ) -> list[Any]:
        """Local alarms are HTTP metrics read within ``allow`` (never a DeployError: an
        endpoint that does not answer reads INSUFFICIENT_DATA)."""
        from orchestration.alarms import read_http_metric

        return [read_http_metric(spec, allow=allow) for spec in alarms]

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(settings, Mapping):
            raise SettingsError({"settings": 'Give an object of settings, e.g. {"port": 8101}.'})
        errors: dict[str, str] = {}
        repository = str(settings.get("repository", "")).strip()
        if not repository:
            errors["repository"] = "Give the path of the git repository holding the app's code."
        command = settings.get("command", DEFAULT_COMMAND)
        if isinstance(command, str):
            command = shlex.split(command)
        if not command or not all(isinstance(part, str) and part for part in command):
            errors["command"] = (
                "Give the command as a list of arguments, e.g. ['python', 'app.py']."
            )
        port = settings.get("port")
        try:
            port = int(port)
            if not 1024 <= port <= 65535:
                raise ValueError
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            errors["port"] = "Give a port number between 1024 and 65535."
        host = str(settings.get("host", "127.0.0.1")).strip()
        if not local_address(host):
            errors["host"] = (
                "Give an IPv4 address or name of this machine to listen on, e.g. 127.0.0.1 or "
                "0.0.0.0."
            )
        start_timeout = _seconds(settings, "start_timeout", 15, errors)
        stop_timeout = _seconds(settings, "stop_timeout", 10, errors)
        state_dir = str(settings.get("state_dir", "")).strip()
        if not state_dir:
            errors["state_dir"] = "Give a directory where versions, pid files and logs are kept."
        if errors:
            raise SettingsError(errors)
        return {
            "repository": repository,
            "command": list(command),
            "port": port,
            "host": host,
            "start_timeout": start_timeout,
            "stop_timeout": stop_timeout,
            "state_dir": state_dir,
        }

    # -- paths and state -------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return Path(self.settings["state_dir"])

    def _state_file(self, environment: str) -> Path:
        return self.state_dir / f"{environment}.json"

    def read_state(self, environment: str) -> dict[str, Any]:
        try:
            return json.loads(self._state_file(environment).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _write_state(self, environment: str, state: dict[str, Any]) -> None:
        path = self._state_file(environment)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)  # atomic: a crash leaves the old state or the new, never half

    @contextlib.contextmanager
    def _locked(self, environment: str, *, wait: bool = True):
        """One deploy per environment at a time, even across processes; yields whether the
        lock is held (``wait=False`` gives up at once while a deploy holds it). A killed
        worker's lock is released by the kernel."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / f"{environment}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def running_version(self, environment: str = "") -> str | None:
        with self._locked(environment, wait=False) as held:
            state = self._adopt(environment) if held else self.read_state(environment)
        if state and process_alive(state.get("pid"), state.get("started")):
            return state.get("digest")
        return None

    def _adopt(self, environment: str) -> dict[str, Any]:
        """The state, after adopting a process whose start was recorded but whose pid was not
        (its worker was killed in between): found by the start id in its environment. Call with
        the lock held."""
        state = self.read_state(environment)
        if not state.get("start_id") or state.get("pid"):
            return state
        pid = find_process_by_start_id(state["start_id"])
        state = {**state, "pid": pid, "started": process_start_time(pid)} if pid else {}
        self._write_state(environment, state)
        return state

    # -- deploy ----------------------------------------------------------------------------

    def deploy(self, request: DeployRequest, progress: Progress = no_progress) -> DeployResult:
        if not request.git_sha:
            raise DeployError(
                f"{request.repository}:{request.tag} has no git sha; the local backend runs "
                f"the code of a commit."
            )
        with self._locked(request.environment):
            t = time.monotonic()
            workdir = self._export(request.git_sha)
            # Each log line is a database write: on the way to the new version they are written
            # while the old process exits and the new one starts, instead of before.
            lines = [(f"Exported commit {request.git_sha[:7]} to {workdir}", time.monotonic() - t)]

            def write_lines() -> None:
                while lines:
                    progress(*lines.pop(0))

            state = self._adopt(request.environment)
            if request.should_stop():
                write_lines()
                raise DeployStopped(
                    f"Stopped before the switch: {state.get('tag') or 'nothing'} still runs, "
                    f"{request.tag} was not started"
                )
            t = time.monotonic()
            stopped_previous = bool(state) and process_alive(state.get("pid"), state.get("started"))
            if stopped_previous:
                signalled = terminate(state["pid"])
                try:
                    write_lines()
                finally:
                    stopped = (
                        wait_stopped(
                            state["pid"], self.settings["stop_timeout"], Heartbeat(progress)
                        )
                        if signalled
                        else "already gone"
                    )
                lines.append(
                    (
                        f"Stopped {state.get('tag', 'previous version')} (pid {state['pid']}, "
                        f"{stopped})",
                        time.monotonic() - t,
                    )
                )
            else:
                write_lines()
            try:
                result = self._start_new(request, workdir, stopped_previous, write_lines, progress)
            except DeployError:
                raise  # a sentence already, and previous_stopped says what is left
            except Exception as exc:
                # A bug or a fault of this machine, not of the version: what ran before is put
                # back at once; the traceback goes to the server log, the run gets a sentence.
                log.exception("local deploy of %s to %s failed", request.tag, request.environment)
                write_lines()
                raise self._restore(request, state if stopped_previous else {}, exc) from None
            if request.should_stop():
                # The last safe point before opsweb records the switch: put back what ran.
                previous = state if stopped_previous else {}
                raise DeployStopped(self._put_back(request, result.ref["pid"], previous))
            return result

    def _start_new(
        self,
        request: DeployRequest,
        workdir: Path,
        stopped_previous: bool,
        write_lines: Callable[[], None],
        progress: Progress,
    ) -> DeployResult:
        """Start ``request``'s version from ``workdir`` (what ran before is stopped already)
        and wait until it listens. Raises DeployError for what the version or the port did,
        with ``previous_stopped`` as given."""
        self._write_state(request.environment, {})
        port, host = self.settings["port"], self.settings["host"]
        if port_in_use(host, port):
            write_lines()
            raise DeployError(
                f"Port {port} on {host} is in use by a process opsweb did not start; "
                f"stop it or give this environment another port.",
                previous_stopped=stopped_previous,
            )
        t = time.monotonic()
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{request.environment}-{request.tag}-{int(time.time())}.log"
        starting = {
            "start_id": uuid.uuid4().hex,
            "tag": request.tag,
            "digest": request.digest,
            "git_sha": request.git_sha,
            "port": port,
            "log": str(log_path),
            "workdir": str(workdir),
        }
        # Written before the start: a worker killed between the start and the next write
        # leaves a process that its start id finds (``_adopt``), not a stranger on the port.
        self._write_state(request.environment, starting)
        try:
            pid, started = self._start(request, workdir, log_path, starting["start_id"])
        except DeployError as exc:
            self._write_state(request.environment, {})
            raise DeployError(str(exc), previous_stopped=stopped_previous) from None
        finally:
            write_lines()
        self._write_state(request.environment, {**starting, "pid": pid, "started": started})
        try:
            self._wait_until_listening(pid, started, host, port, log_path, Heartbeat(progress))
        except DeployError as exc:
            raise DeployError(str(exc), previous_stopped=stopped_previous) from None
        progress(
            f"Started {request.tag} as pid {pid}, listening on {host}:{port}",
            time.monotonic() - t,
        )
        return DeployResult(
            ref={"pid": pid, "port": port, "log": str(log_path)},
            message=f"{request.tag} runs as pid {pid} on port {port}",
        )

    def _restore(self, request: DeployRequest, previous: dict[str, Any], exc: Exception):
        """After an unexpected ``exc`` while starting ``request``'s version: stop whatever of
        it started, start ``previous`` (the state of the process stopped for it; {} if none)
        again, and return the DeployError to raise: ``previous_stopped`` only when the
        previous version could not be started again."""
        failed = f"Starting {request.tag} failed ({type(exc).__name__}: {exc})"
        with contextlib.suppress(Exception):
            started = self.read_state(request.environment)
            if process_alive(started.get("pid"), started.get("started")):
                stop_process(started["pid"], self.settings["stop_timeout"])
            self._write_state(request.environment, {})
        if not previous.get("git_sha"):
            return DeployError(f"{failed}; nothing ran before it.", previous_stopped=False)
        again = DeployRequest(
            environment=request.environment,
            settings=request.settings,
            repository=request.repository,
            tag=previous.get("tag", "previous version"),
            digest=previous.get("digest", ""),
            git_sha=previous["git_sha"],
            is_rollback=True,
        )
        try:
            result = self._start_new(
                again,
                Path(previous.get("workdir") or self._export(previous["git_sha"])),
                False,
                lambda: None,
                no_progress,
            )
        except Exception as second:  # named in the sentence, its traceback logged here
            log.warning("restoring %s after a failed deploy failed", again.tag, exc_info=True)
            return DeployError(
                f"{failed}; starting {again.tag} again failed too ({second}).",
                previous_stopped=True,
            )
        return DeployError(
            f"{failed}; {again.tag} was started again ({result.message}).",
            previous_stopped=False,
        )

    def _put_back(self, request: DeployRequest, pid: int, previous: dict[str, Any]) -> str:
        """After a stop was asked for: stop the just-started ``pid`` and start again what ran before (``previous``, its
        recorded state; empty when nothing ran). Call with the lock held. Returns what it did,
        as a sentence; a restore that fails says so (opsweb then records what really runs)."""
        t = time.monotonic()
        stop_process(pid, self.settings["stop_timeout"])
        self._write_state(request.environment, {})
        if not previous.get("workdir") or not previous.get("git_sha"):
            return f"Stopped after the switch: {request.tag} was stopped again; nothing runs"
        back = replace(
            request,
            tag=previous.get("tag", ""),
            digest=previous.get("digest", ""),
            git_sha=previous["git_sha"],
            is_rollback=True,
        )
        host, port = self.settings["host"], self.settings["port"]
        logs = self.state_dir / "logs"
        log_path = logs / f"{request.environment}-{back.tag}-{int(time.time())}.log"
        starting = {
            **{k: previous[k] for k in ("tag", "digest", "git_sha", "workdir") if k in previous},
            "start_id": uuid.uuid4().hex,
            "port": port,
            "log": str(log_path),
        }
        self._write_state(request.environment, starting)
        try:
            restored, started = self._start(
                back, Path(previous["workdir"]), log_path, starting["start_id"]
            )
            self._write_state(
                request.environment, {**starting, "pid": restored, "started": started}
            )
            self._wait_until_listening(restored, started, host, port, log_path, lambda: None)
        except DeployError as exc:
            return (
                f"Stopped after the switch: {request.tag} was stopped, but {back.tag} did not "
                f"start again: {exc}"
            )
        return (
            f"Stopped after the switch: {request.tag} was stopped and {back.tag} runs again as "
            f"pid {restored} ({time.monotonic() - t:.1f}s)"
        )

    def _export(self, git_sha: str) -> Path:
        target = self.state_dir / "versions" / git_sha
        if (target / ".opsweb-complete").exists():
            return target  # exported before, so the commit exists: a rollback skips git
        repository = Path(self.settings["repository"])
        if not (repository / ".git").exists() and not (repository / "HEAD").exists():
            raise DeployError(
                f"No git repository at {repository}; check this environment's settings."
            )
        check = git(repository, "cat-file", "-e", f"{git_sha}^{{commit}}")
        if check.returncode != 0:
            raise DeployError(f"Commit {git_sha} is not in the repository at {repository}.")
        archive = subprocess.run(
            ["git", "-C", str(repository), "archive", "--format=tar", git_sha],
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            raise DeployError(
                f"git archive of {git_sha} failed: {archive.stderr.decode(errors='replace')}"
            )
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(target, filter="data")
        (target / ".opsweb-complete").touch()
        return target

    def _start(
        self, request: DeployRequest, workdir: Path, log_path: Path, start_id: str
    ) -> tuple[int, float | None]:
        command = list(self.settings["command"])
        if command[0] == "python":
            command[0] = sys.executable  # the interpreter opsweb runs on, not whatever is on PATH
        child_env = {
            START_ID_VARIABLE: start_id,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(workdir)),
            "PORT": str(self.settings["port"]),
            "HOST": self.settings["host"],
            "APP_VERSION": request.tag,
            "APP_DIGEST": request.digest,
            "ROLLBACK": "1" if request.is_rollback else "0",
            "PYTHONUNBUFFERED": "1",
        }
        with open(log_path, "wb") as log:
            try:
                process = subprocess.Popen(
                    command,
                    cwd=workdir,
                    env=child_env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own session: it outlives the worker that started it and an opsweb
                    # restart, and Ctrl-C in `make run` does not reach it.
                    start_new_session=True,
                )
            except OSError as exc:
                raise DeployError(f"Could not start {shlex.join(command)}: {exc}") from None
        return process.pid, process_start_time(process.pid)

    def _wait_until_listening(
        self, pid: int, started: float | None, host: str, port: int, log_path: Path, beat
    ) -> None:
        deadline = time.monotonic() + self.settings["start_timeout"]
        delay = 0.005
        while time.monotonic() < deadline:
            beat()
            if not process_alive(pid, started):
                raise DeployError(
                    f"The command exited at once ({exit_description(pid)}). Last output:\n"
                    f"{tail(log_path)}"
                )
            if port_in_use(host, port):
                return
            # Python apps listen after ~0.1 s: look often (a connect is cheap), backing off a little.
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
        stop_process(pid, self.settings["stop_timeout"])
        raise DeployError(
            f"The process did not listen on {host}:{port} within "
            f"{self.settings['start_timeout']:g}s. Last output:\n{tail(log_path)}"
        )

    def stop(self, environment: str) -> None:
        """Stop what runs in ``environment`` (used by tests and the demo's reset)."""
        with self._locked(environment):
            state = self._adopt(environment)
            if state and process_alive(state.get("pid"), state.get("started")):
                stop_process(state["pid"], self.settings["stop_timeout"])
            self._write_state(environment, {})


# Waits longer than this would outlast the reconciler's patience with a silent worker.
MAX_WAIT_SECONDS = 60


def _seconds(settings: Mapping[str, Any], key: str, default: float, errors: dict) -> float:
    try:
        value = float(settings.get(key, default))
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        value = math.nan
    if not 0 < value <= MAX_WAIT_SECONDS:  # also refuses nan and inf
        errors[key] = f"Give a number of seconds between 0 and {MAX_WAIT_SECONDS}."
    return value


class Heartbeat:
    """Tells opsweb the worker is alive while it waits, without logging every poll."""

    def __init__(self, progress: Progress, every: float = 5.0):
        self.progress, self.every, self.last = progress, every, time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.last >= self.every:
            self.progress("", None)
            self.last = time.monotonic()


# Set in each started process's environment; names it in /proc after its worker died.
START_ID_VARIABLE = "OPSWEB_START_ID"


def find_process_by_start_id(start_id: str) -> int | None:
    """The pid of the process started with ``OPSWEB_START_ID=start_id``, if it still runs."""
    needle = f"{START_ID_VARIABLE}={start_id}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if needle in environ.split(b"\0") and process_alive(int(entry.name)):
            return int(entry.name)
    return None


def git(repository: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(repository), *args], capture_output=True, text=True, check=False
    )


def process_start_time(pid: int) -> float | None:
    """The process's start time in clock ticks since boot: tells a pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return float(stat.rsplit(")", 1)[1].split()[19])


def process_alive(pid: int | None, started: float | None = None) -> bool:
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in {"Z", "X"}:  # exited, waiting to be reaped
        return False
    return started is None or float(fields[19]) == started


def stop_process(pid: int, timeout: float, beat=lambda: None) -> str:
    """TERM the process group, wait up to ``timeout`` seconds, then KILL it."""
    if not terminate(pid):
        return "already gone"
    return wait_stopped(pid, timeout, beat)


def terminate(pid: int) -> bool:
    """Send TERM to the process group; False if it is gone already."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def wait_stopped(pid: int, timeout: float, beat=lambda: None) -> str:
    """Wait up to ``timeout`` seconds for a TERMed process to exit, then KILL its group."""
    deadline = time.monotonic() + timeout
    with ExitWatch(pid) as watch:
        while time.monotonic() < deadline:
            beat()
            _reap(pid)
            if not process_alive(pid):
                return "stopped with TERM"
            # Woken the moment it exits where the OS can tell (Linux pidfd), else a short poll.
            watch.wait(min(0.5, max(0.0, deadline - time.monotonic())))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for _ in range(100):
        _reap(pid)
        if not process_alive(pid):
            break
        time.sleep(0.05)
    return f"killed after {timeout:g}s"


class ExitWatch:
    """Waits for any process (not only a child) to exit: a Linux pidfd where there is one,
    otherwise polls that start at 5 ms and double up to 50 ms."""

    def __init__(self, pid: int):
        self.pid, self.fd, self.delay = pid, None, 0.005

    def __enter__(self) -> ExitWatch:
        with contextlib.suppress(AttributeError, OSError):  # not Linux ≥ 5.3, or gone already
            self.fd = os.pidfd_open(self.pid)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)

    def wait(self, timeout: float) -> None:
        if self.fd is not None:
            select.select([self.fd], [], [], timeout)
            return
        time.sleep(min(self.delay, timeout))
        self.delay = min(self.delay * 2, 0.05)


def _reap(pid: int) -> None:
    # Only our own children can be reaped; others are reaped by init.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def exit_description(pid: int) -> str:
    try:
        _, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "exit status unknown"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return "exit status unknown"


def local_address(host: str) -> bool:
    """Whether ``host`` (an IPv4 address or a name) is an address of this machine a process can
    listen on: it resolves, and a socket binds to it."""
    if not host or any(c.isspace() for c in host):
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except (OSError, UnicodeError):
        return False
    return True


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"
