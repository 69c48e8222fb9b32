# Everything the project needs is installed under .tools/ by these targets, at the
# versions pinned in local/requirements.txt and local/constraints.txt.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .tools/venv
TOOLS_STAMP := $(VENV)/.installed
CARGO_FLAGS := --workspace --locked

.PHONY: help tools build release test check unit integration fmt clean

help:
	@echo "make test      formatting, lints, unit and integration tests (what CI runs)"
	@echo "make build     debug build of the three functions"
	@echo "make release   optimized build of the three functions"
	@echo "make tools     install the local AWS APIs (moto) into $(VENV)"

$(TOOLS_STAMP): local/requirements.txt local/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r local/requirements.txt -c local/constraints.txt
	touch $@

tools: $(TOOLS_STAMP)

build:
	cargo build $(CARGO_FLAGS)

release:
	cargo build $(CARGO_FLAGS) --release --bins

check:
	cargo fmt --all --check
	cargo clippy $(CARGO_FLAGS) --all-targets -- -D warnings

# Unit tests and integration tests (which start moto on a free loopback port
# themselves), then one line adding up every suite's result.
test: $(TOOLS_STAMP) check
	cargo test $(CARGO_FLAGS) --lib --bins --tests 2>&1 | tee .tools/test.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "tests: %d passed, %d failed\n", p, f}' .tools/test.log

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf .tools
