# Two commands for a newcomer: `make run` and `make test`. Both install what they need into .venv.
PYTHON ?= python3
VENV := .venv
# The end-to-end tier in three processes (pytest-xdist): each test starts its own servers on free
# ports and holds its own Redis database. E2E_PARALLEL= runs it in one.
E2E_PARALLEL ?= -n 3

.PHONY: run test test-fast test-container user lint format

$(VENV)/.run: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.run requirements-dev.txt
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

run: $(VENV)/.run
	$(VENV)/bin/python app.py

# A user of the hub: `make user NAME=alice` (add ADMIN=1 for an admin); asks the password.
user: $(VENV)/.run
	@test -n "$(NAME)" || { echo "usage: make user NAME=alice [ADMIN=1]"; exit 2; }
	$(VENV)/bin/python app.py create-user "$(NAME)" $(if $(ADMIN),--admin)

# Browser tests need Debian's Chromium (and a CJK font for readable screenshots); install it where
# we can (root + apt), skip with a reason elsewhere. The fast tier (tests/unit, in-process) runs
# first; then the end-to-end tier against the real server. The container tests have their own
# target.
test: $(VENV)/.dev
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null) ; } || echo "chromium unavailable: browser tests will skip"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest tests/unit
	$(VENV)/bin/pytest --ignore=tests/unit --ignore=tests/test_container.py $(E2E_PARALLEL)

# The fast tier alone: seconds.
test-fast: $(VENV)/.dev
	$(VENV)/bin/pytest tests/unit

# The image: built from the Dockerfile by podman and run (tests/test_container.py). Installs podman,
# runc and debootstrap where it can (root + apt); elsewhere the tests skip with a reason, unless
# REQUIRE_CONTAINER=1 (CI).
test-container: $(VENV)/.dev
	@{ command -v podman && command -v runc && command -v debootstrap ; } >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null) ; } || \
		echo "podman unavailable: the container tests will skip"
	$(VENV)/bin/pytest tests/test_container.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
