# The two README commands. Both set up .venv first (idempotent, seconds when nothing changed).
SPEC ?= configs/demo.yaml
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast
setup:
	@bash scripts/setup_env.sh

demo: setup
	.venv/bin/gream launch $(SPEC)

test: setup
	@bash scripts/setup_browser.sh
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q --durations=15 $(PYTEST_ARGS)

# Everything that starts no Ray, vLLM or DeepSpeed (the `heavy` marker): under 2 minutes.
test-fast: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q -m "not heavy" $(PYTEST_ARGS)
