"""LocalProcessBackend against real processes and a real git repository."""

import socket
import subprocess
import sys

import pytest

from opsweb.sample_app import Release, create_repository, digest_for
from orchestration.base import DeployError, DeployRequest, SettingsError
from orchestration.local import LocalProcessBackend, process_alive, stop_process
from tests.conftest import free_port
from tests.conftest import get_json as get_url_json


def get_json(port: int, path: str = "/") -> dict:
    return get_url_json(f"http://127.0.0.1:{port}{path}")


RELEASES = [
    Release("1.0.0", "first"),
    Release("1.1.0", "second"),
    Release("2.0.0", "crashes at start", crashes=True),
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample-repo")
    return path, create_repository(path, RELEASES)


@pytest.fixture
def backend(repo, tmp_path):
    path, _ = repo
    settings = {
        "repository": str(path),
        "port": free_port(),
        "state_dir": str(tmp_path),
        "start_timeout": 10,
        "stop_timeout": 3,
    }
    backend = LocalProcessBackend(settings)
    yield backend
    backend.stop("test")


def request(repo, tag, **kwargs):
    _, shas = repo
    return DeployRequest(
        environment="test",
        settings={},
        repository="sample",
        tag=tag,
        digest=digest_for(shas[tag]),
        git_sha=shas[tag],
        **kwargs,
    )


def test_local_deploy_starts_the_version_with_its_environment(backend, repo):
    events = []
    result = backend.deploy(request(repo, "1.0.0"), lambda m, s=None: events.append(m))
    body = get_json(backend.settings["port"])
    assert body["version"] == "1.0.0" and body["rollback"] is False
    assert body["pid"] == result.ref["pid"]
    assert any("Exported commit" in e for e in events) and any("Started 1.0.0" in e for e in events)


def test_local_upgrade_stops_the_old_process_and_rollback_sets_rollback(backend, repo):
    first = backend.deploy(request(repo, "1.0.0")).ref["pid"]
    second = backend.deploy(request(repo, "1.1.0")).ref["pid"]
    assert not process_alive(first)
    assert get_json(backend.settings["port"])["version"] == "1.1.0"
    third = backend.deploy(request(repo, "1.0.0", is_rollback=True)).ref["pid"]
    assert not process_alive(second)
    body = get_json(backend.settings["port"])
    assert (body["version"], body["rollback"], body["pid"]) == ("1.0.0", True, third)


def test_local_state_survives_an_opsweb_restart_without_duplicating(backend, repo):
    first = backend.deploy(request(repo, "1.0.0")).ref["pid"]
    restarted = LocalProcessBackend(backend.settings)  # a new opsweb process reads the state
    assert restarted.running_version("test") == digest_for(repo[1]["1.0.0"])
    second = restarted.deploy(request(repo, "1.1.0")).ref["pid"]
    assert not process_alive(first) and process_alive(second)
    assert get_json(backend.settings["port"])["pid"] == second


def test_local_command_that_exits_at_once_is_reported_with_its_output(backend, repo):
    with pytest.raises(DeployError) as exc:
        backend.deploy(request(repo, "2.0.0"))
    message = str(exc.value)
    assert "exited at once" in message and "exit code 3" in message
    assert "missing configuration" in message  # the process's last output lines
    assert backend.running_version("test") is None


def test_local_port_in_use_by_a_stranger_is_refused(backend, repo):
    with socket.socket() as stranger:
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        stranger.bind(("127.0.0.1", backend.settings["port"]))
        stranger.listen()
        with pytest.raises(DeployError, match="in use by a process opsweb did not start"):
            backend.deploy(request(repo, "1.0.0"))


def test_local_unknown_commit_is_refused(backend, repo):
    bad = DeployRequest(
        environment="test",
        settings={},
        repository="sample",
        tag="9.9.9",
        digest=digest_for("x"),
        git_sha="f" * 40,
    )
    with pytest.raises(DeployError, match=f"Commit {'f' * 40} is not in the repository"):
        backend.deploy(bad)


def test_local_missing_repository_is_refused(tmp_path, repo):
    backend = LocalProcessBackend(
        {
            "repository": str(tmp_path / "nope"),
            "port": free_port(),
            "state_dir": str(tmp_path / "state"),
        }
    )
    with pytest.raises(DeployError, match="No git repository at"):
        backend.deploy(request(repo, "1.0.0"))


def test_local_settings_name_each_bad_field():
    with pytest.raises(SettingsError) as exc:
        LocalProcessBackend({"port": 80, "command": []})
    assert set(exc.value.errors) == {"repository", "port", "command", "state_dir"}


def test_local_process_started_by_a_worker_killed_before_recording_it_is_adopted(backend, repo):
    backend.deploy(request(repo, "1.0.0"))
    orphan = get_json(backend.settings["port"])["pid"]
    # What a worker killed between starting the process and writing its pid leaves behind:
    # the record written before the start, and the process on the port.
    state = backend.read_state("test")
    del state["pid"], state["started"]
    backend._write_state("test", state)

    assert backend.running_version("test") == request(repo, "1.0.0").digest
    assert backend.read_state("test")["pid"] == orphan
    backend.deploy(request(repo, "1.1.0", is_rollback=True))
    assert get_json(backend.settings["port"])["version"] == "1.1.0"
    assert not process_alive(orphan)


def test_local_start_record_without_a_process_is_cleared(backend, repo):
    backend._write_state("test", {"start_id": "gone", "tag": "1.0.0", "digest": "sha256:x"})
    assert backend.running_version("test") is None
    assert backend.read_state("test") == {}


def test_stop_process_stops_a_process_another_process_started():
    # After an opsweb restart the running version is nobody's child here: it cannot be waited
    # for with waitpid, only watched (a pidfd on Linux, polls elsewhere).
    launcher = subprocess.run(
        [
            sys.executable,
            "-c",
            "import subprocess; print(subprocess.Popen(['sleep', '60'], "
            "start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(launcher.stdout)
    assert process_alive(pid)

    assert stop_process(pid, timeout=10) == "stopped with TERM"
    assert not process_alive(pid)


@pytest.mark.parametrize("host", ["no such host", "nosuchhost.invalid", "192.0.2.1", "::1", ""])
def test_local_host_that_is_not_an_address_of_this_machine_is_refused(host, tmp_path):
    with pytest.raises(SettingsError) as exc:
        LocalProcessBackend(
            {"repository": "/r", "port": 8101, "state_dir": str(tmp_path), "host": host}
        )
    assert set(exc.value.errors) == {"host"}
    assert "address or name of this machine" in exc.value.errors["host"]


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "localhost"])  # noqa: S104 (accepted, not bound)
def test_local_host_of_this_machine_is_accepted(host, tmp_path):
    backend = LocalProcessBackend(
        {"repository": "/r", "port": 8101, "state_dir": str(tmp_path), "host": host}
    )
    assert backend.settings["host"] == host


def test_local_error_after_the_stop_starts_the_previous_version_again(backend, repo, monkeypatch):
    # A fault of opsweb or the machine while checking the new version (not the version's own
    # failure): what ran before answers again, and the error is one sentence.
    backend.deploy(request(repo, "1.0.0"))
    port = backend.settings["port"]
    check = LocalProcessBackend._wait_until_listening
    calls = []

    def fails_once(self, *args):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("lost the process table")
        return check(self, *args)

    monkeypatch.setattr(LocalProcessBackend, "_wait_until_listening", fails_once)
    with pytest.raises(DeployError) as exc:
        backend.deploy(request(repo, "1.1.0"))
    assert str(exc.value).startswith(
        "Starting 1.1.0 failed (RuntimeError: lost the process table); 1.0.0 was started again"
    )
    assert exc.value.previous_stopped is False
    assert get_json(port)["version"] == "1.0.0"
    assert backend.running_version("test") == request(repo, "1.0.0").digest
