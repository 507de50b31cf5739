# covid_lakehouse: every entry point a user or CI needs. demo/up/bench need Python 3.11+ with venv;
# test also needs chromium, chromedriver and kubectl on PATH (checked first: see README, Prerequisites).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NAME ?=

.PHONY: venv browser prerequisites demo up start test bench bench-smoke lint clean

# Create the virtualenv and install the project with its dev extras (re-run when pyproject changes).
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# Start embedded PostgreSQL + S3, materialize every asset on bundled data, print a summary.
demo: venv
	$(BIN)/covid-lakehouse demo

# Dagster UI + daemon on http://127.0.0.1:3000 (schedules and sensors live); Ctrl-C stops all.
up: venv
	$(BIN)/covid-lakehouse up

# The same as `make up`, under the name the ads seed's instructions use.
start: up

# Debian's chromium + chromedriver for the UI test, installed with apt-get when missing and root (CI);
# anywhere else `prerequisites` reports what is missing.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium + chromium-driver (Debian packages) for the UI test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

# What the test suite needs beyond Python, checked before any test runs: one message listing all of it.
prerequisites:
	@missing=""; for tool in chromium chromedriver kubectl; do \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "make test needs on PATH:$$missing (the UI test drives chromium; the Kubernetes test renders deploy/k8s" \
	       "with kubectl kustomize). Debian/Ubuntu: apt-get install chromium chromium-driver, kubectl from" \
	       "pkgs.k8s.io; macOS: brew install --cask chromium chromedriver && brew install kubectl." \
	       "See README.md, Prerequisites."; \
	  exit 1; fi

# The whole test suite against real embedded services, UI test included (what CI runs).
test: venv browser prerequisites
	$(BIN)/pytest -q

# Benchmarks (ratios against a floor measured in the same run); NAME=x runs one.
bench: venv
	$(BIN)/python -m benchmarks $(NAME)

# Every benchmark end to end at a tiny scale (CI): fails only if one crashes; figures neither judged nor saved.
bench-smoke: venv
	$(BIN)/python -m benchmarks --smoke $(NAME)

# Static checks.
lint: venv
	$(BIN)/ruff check covid_lakehouse covid_lakehouse_dev covid_lakehouse_tests benchmarks tools

# Stop the embedded services and delete local data and the virtualenv.
clean:
	-@[ -x $(BIN)/covid-lakehouse ] && $(BIN)/covid-lakehouse clean
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
