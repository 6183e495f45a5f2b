import pytest


@pytest.mark.django_db
def test_healthz_answers_ok_when_the_database_answers(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


@pytest.fixture
def unreachable_database(tmp_path, monkeypatch):
    """/healthz's connection pointed at a database that cannot be opened: a SQLite file in a
    directory that does not exist, or a PostgreSQL port nobody listens on. Yields what the
    error says that a caller must not see (PostgreSQL's names the host and port)."""
    from django.db import connections

    default = connections["default"]

    from tests.conftest import free_port

    settings = {**default.settings_dict}
    if default.vendor == "sqlite":
        settings["NAME"] = str(tmp_path / "nowhere-zq" / "opsweb.sqlite3")
        detail = "unable to open database file"
    else:
        settings["PORT"] = str(free_port())
        detail = settings["PORT"]
    broken = default.__class__(settings, alias="healthz-broken")
    monkeypatch.setattr("opsweb.views.connection", broken)
    yield detail
    broken.close()


@pytest.mark.django_db
def test_healthz_answers_503_when_the_database_does_not(client, unreachable_database, caplog):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "error", "database": "database unavailable"}
    assert unreachable_database not in response.content.decode()
    assert unreachable_database in caplog.text  # the detail is in the log, for the operator
