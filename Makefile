# One way to set up, lint and test: these targets. .ci/run calls `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
COHORT ?= inventories/demo
# What the controller needs from Debian: nspawn hosts, their base image, the package service (nginx, run by labkit
# per cohort as an unprivileged user; the system's own nginx service is left disabled if this installs it), and
# redis-server, which the load-user unit tests start on loopback.
APT_PACKAGES := debootstrap systemd-container nginx-light nftables iproute2 openssh-client python3-venv \
                ca-certificates debian-archive-keyring procps redis-server
PYTEST := $(BIN)/pytest -p no:cacheprovider

.PHONY: help setup apt venv demo-keys demo demo-down lint checkov unit molecule integration test bench clean

help:
	@echo "make demo       provision, load and grade the two-student demo cohort on local lab hosts"
	@echo "make demo-down  tear the demo cohort down (nothing left behind)"
	@echo "make test       lint + unit tests + integration test on a real local fleet"
	@echo "make bench      measure provisioning and load figures"

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	  | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  if echo " $$missing " | grep -q ' nginx-light ' && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
	    systemctl disable --now nginx || true; \
	  fi; \
	fi

$(BIN)/labkit: pyproject.toml | apt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/labkit

# checkov pins an older boto3 than the kit, so it lives in a venv of its own (like pipx).
CHECKOV_VERSION := 3.3.30
$(VENV)-checkov/bin/checkov: | apt
	$(PYTHON) -m venv $(VENV)-checkov
	$(VENV)-checkov/bin/pip install -q checkov==$(CHECKOV_VERSION)
	@touch $@

setup: apt venv demo-keys

# Demo students' keys: generated here, never committed.
demo-keys: inventories/demo/keys/s01.pub inventories/demo/keys/s02.pub
inventories/demo/keys/%.pub:
	@mkdir -p $(@D)
	ssh-keygen -q -t ed25519 -N '' -C "$*@demo" -f inventories/demo/keys/$*

demo: setup
	$(BIN)/labkit demo $(COHORT)

demo-down: venv
	$(BIN)/labkit fleet down $(COHORT)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/yamllint -s .
	$(BIN)/labkit terraform -chdir=terraform fmt -check -recursive
	ANSIBLE_CONFIG=ansible.cfg $(BIN)/ansible-lint --offline --profile production playbooks roles

# Offline (--skip-download): it would otherwise try to reach a vendor API. Skipped rules are
# justified in checkov:skip comments next to the resources.
checkov: $(VENV)-checkov/bin/checkov
	$(VENV)-checkov/bin/checkov -d terraform --framework terraform --skip-download --quiet --compact

unit: venv $(VENV)-checkov/bin/checkov
	$(PYTEST) tests/unit -q

# Role tests: one local fleet lab host per scenario (molecule/<role>/), idempotence included.
# Molecule 26 looks its ansible tools up on PATH. The scenarios are independent one-student cohorts, so
# MOLECULE_JOBS of them run at once (a lone lab host leaves the 2 cores idle most of the time); each one's
# output goes to reports/molecule/<role>.log, shown when it fails.
MOLECULE_SCENARIOS := $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml))
MOLECULE_JOBS ?= 3
molecule: setup
	@mkdir -p reports/molecule
	@printf '%s\n' $(MOLECULE_SCENARIOS) | PATH="$(CURDIR)/$(BIN):$$PATH" xargs -P $(MOLECULE_JOBS) -I{} bash -c '\
	  t0=$$SECONDS; \
	  if molecule test -s {} > reports/molecule/{}.log 2>&1; then \
	    echo "molecule {}: passed in $$((SECONDS - t0)) s (reports/molecule/{}.log)"; \
	  else \
	    echo "molecule {}: FAILED after $$((SECONDS - t0)) s; the end of reports/molecule/{}.log:"; \
	    tail -n 80 reports/molecule/{}.log; exit 1; \
	  fi'

integration: setup
	$(PYTEST) tests/integration -q -s --durations=25

# Lint, unit tests and Molecule at once (alone, each leaves a core idle much of the time; each one's output is shown
# when it ends), then the integration test.
test: setup
	@$(MAKE) --no-print-directory -j3 --output-sync=target lint unit molecule
	@$(MAKE) --no-print-directory integration
	@echo "make test: lint, unit, molecule and integration passed"

# make bench STUDENTS=N: one student, then N students, in one run (reports/bench/bench.json).
STUDENTS ?= 5
bench: setup
	$(BIN)/python tests/bench/bench_fleet.py --students $(STUDENTS)

clean:
	rm -rf $(VENV) .ruff_cache .pytest_cache reports
