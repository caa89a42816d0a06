# The README's commands. `make run` and `make test` each create .venv and install everything first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN    ?= runs/default

.PHONY: install run test bench anchors clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -c 'import rnnkit.kernels; rnnkit.kernels.precompile()'  # numba's loops, once
	touch $@

# Train with the defaults on the seed's combined wave, test, and write the plots into $(RUN). One torch
# thread (the CLI's default): a second gains little on these small models and loses many times that
# when another process takes a core (README, "Threads").
run: install
	$(BIN)/rnnkit train --force --test --visualize --out $(RUN)
	@echo "Run directory: $(RUN) (model.safetensors, config.json, metrics.json, *.png)"

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/rnnkit bench

# Accuracy against statsforecast's AutoETS/AutoARIMA/AutoTheta/seasonal naive on public series
# (benchmarks/forecast_anchors.py; the `anchors` extra is for this alone). ANCHORS_ARGS='--only austa --no-panel'
anchors: $(VENV)/.anchors
	$(BIN)/python benchmarks/forecast_anchors.py $(ANCHORS_ARGS)

$(VENV)/.anchors: $(VENV)/.installed pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[anchors]'
	touch $@

clean:
	rm -rf $(VENV) runs build src/*.egg-info
