# The two commands of the README: `make serve` and `make test`. Both install what they need first.
VENV ?= .venv
PORT ?= 8000
MODEL ?= google/vit-base-patch16-224
STAMP := $(VENV)/.iei-installed

.PHONY: install install-simd serve test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $(STAMP)

# Optional: swap Pillow for pillow-simd (faster resize; see scripts/install.sh).
install-simd: install
	IEI_PILLOW_SIMD=1 VENV=$(VENV) bash scripts/install.sh

# Starts the server on the default model with random weights (works offline).
serve: install
	$(VENV)/bin/iei serve --model $(MODEL) --load-format dummy --port $(PORT)

# The whole test suite, slow end-to-end tests included (this is what CI runs).
test: install
	$(VENV)/bin/python -m pytest --durations=20

test-fast: install
	$(VENV)/bin/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
