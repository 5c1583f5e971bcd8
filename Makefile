# The two README commands. Both set up .venv first (idempotent, seconds when nothing changed).
SPEC ?= configs/demo.yaml
PYTEST_ARGS ?=

.PHONY: setup demo test
setup:
	@bash scripts/setup_env.sh

demo: setup
	.venv/bin/gream launch $(SPEC)

test: setup
	@bash scripts/setup_browser.sh
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)
