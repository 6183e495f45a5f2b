# opsweb: `make run` starts the console with demo data; `make test` runs the suite.
PYTHON ?= $(shell command -v python3.12 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.lock pyproject.toml | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8000
# The web server and the worker alike: notifications link to the port the console runs on.
export PORT
# The demo's applications listen from this port on: sample +0..+3, web +4..+7, tool +8..+10.
DEMO_BASE_PORT ?= 8101

.PHONY: run test venv lint check clean

$(STAMP): requirements-dev.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 12))' || \
	  { echo "opsweb needs Python 3.12 or newer; '$(PYTHON)' is $$($(PYTHON) --version 2>&1). Set PYTHON=/path/to/python3.12."; exit 1; }
	@echo "opsweb: installing Python packages into $(VENV)"
	@# The venv is made without pip (ensurepip alone takes 4 s): the interpreter's own pip puts
	@# uv (from the package index) into it, or, where that pip is missing or older than 22.3,
	@# the venv gets a pip that does. uv resolves and installs the lock file in parallel, in
	@# seconds where pip takes minutes; pip does it alone when uv cannot be had or fails.
	@$(PYTHON) -m pip --version >/dev/null 2>&1 || $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  { echo "opsweb: '$(PYTHON)' has neither pip nor ensurepip; on Debian or Ubuntu: apt-get install python3.12-venv"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv --without-pip $(VENV)
	{ $(PYTHON) -m pip --python $(PY) install --quiet --disable-pip-version-check uv 2>/dev/null || \
	  { $(PY) -m ensurepip --default-pip >/dev/null && \
	    $(PY) -m pip install --quiet --disable-pip-version-check uv; }; } && \
	  $(PY) -m uv pip install --python $(PY) -r requirements-dev.lock || \
	  { $(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --default-pip >/dev/null; \
	    $(PY) -m pip install --upgrade pip && $(PY) -m pip install -r requirements-dev.lock; }
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

run: venv
	@# migrate, bootstrap, demo and local_admin in one process (one Django start-up, not four)
	$(PY) manage.py quickstart --base-port $(DEMO_BASE_PORT)
	@echo "opsweb: http://$(HOST):$(PORT)/admin/  (Ctrl-C stops the web server and the worker)"
	@# --skip-checks: quickstart's migrate has just run the system checks.
	@# `manage.py worker`: the django-q2 cluster, shielded from Ctrl-C's group-wide signal,
	@# stopped through its main pid after the running step; it also recovers lost runs.
	@# It starts once the server listens (opsweb/after_listening.py, the same pid): the two
	@# starts no longer share the cores, so the login page answers seconds sooner.
	@$(PY) -m opsweb.after_listening $(HOST) $(PORT) $(PY) manage.py worker & q=$$!; \
	  trap 'kill -TERM $$q 2>/dev/null; wait $$q' EXIT; \
	  $(PY) manage.py runserver --skip-checks $(HOST):$(PORT)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

check: venv lint
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) var
