# Everything the project needs is installed under .tools/ by these targets, at the
# versions pinned in local/requirements.txt and local/constraints.txt.

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

# One build of every test target, then the unit tests and the integration tests
# (which start moto on a free loopback port themselves).
test: $(TOOLS_STAMP) check
	cargo test $(CARGO_FLAGS) --no-run
	cargo test $(CARGO_FLAGS)

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf .tools
