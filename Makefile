# The README's commands. `make run` and `make test` each create .venv and install everything first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN    ?= runs/default

.PHONY: install run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -c 'import rnnkit.kernels; rnnkit.kernels.precompile()'  # numba's loops, once
	touch $@

# Train with the defaults on the seed's combined wave, test, and write the plots into $(RUN).
run: install
	$(BIN)/rnnkit train --force --threads 2 --test --visualize --out $(RUN)
	@echo "Run directory: $(RUN) (model.safetensors, config.json, metrics.json, *.png)"

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/rnnkit bench

clean:
	rm -rf $(VENV) runs build src/*.egg-info
