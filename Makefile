# The README's commands. `make run` and `make test` each create .venv and install everything first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN    ?= runs/default

.PHONY: install run test test-portable bench anchors clean

# The fused engine's loops for the CLI's cells in float32, compiled ahead (20-25 s on 2 cores); any
# other cell or float64 compiles when a call first needs it (one line on stderr, kept on disk).
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,triton]'
	$(BIN)/python -c 'import rnnkit.kernels; rnnkit.kernels.precompile(cells=("gru", "lstm", "rnn_tanh"), dtypes=("float32",))'
	touch $@

# Train with the defaults on the seed's combined wave, test, and write the plots into $(RUN). One torch
# thread (the CLI's default): a second gains little on these small models and loses many times that
# when another process takes a core (README, "Threads").
run: install
	$(BIN)/rnnkit train --force --test --visualize --out $(RUN)
	@echo "Run directory: $(RUN) (model.safetensors, config.json, metrics.json, *.png)"

test: install
	$(BIN)/python -m pytest -q

# The kernel tests in two builds unlike `make test`'s; CI runs both. First the fused engine as a
# machine unlike this one runs it: compiled for a generic x86-64 (no AVX, FMA or AVX-512: 32-byte
# vectors, fmuladd as a multiply and an add) with every array access checked, on the kernel tests of
# every cell and engine path (its own cache; ~3 min on 2 cores; x86-64 only). Then the path of a torch
# without MKL: scipy's OpenBLAS as the process's own choice (RNNKIT_BLAS=scipy, rnnkit.kernels.blas),
# not patched in by a test, on the host build and the usual cache: every engine path, products
# through BLAS, float32 gradients at width 64 and past a product chunk (~85 s on 2 cores).
PORTABLE_TESTS := test_every_path_matches_reference or test_fused_matches_reference_float32 or small_products or packed_products
OPENBLAS_TESTS := blas_found or without_mkl or test_every_path_matches_reference or test_one_input_feature_on_every_path \
  or (test_weights_grad_from_the_loop and in-place) or test_products_through_blas or test_float32_gradients \
  or small_products or packed_products
test-portable: install
	@if [ "$$(uname -m)" = x86_64 ]; then \
	  RNNKIT_CPU=x86-64 RNNKIT_BOUNDSCHECK=1 RNNKIT_CACHE_DIR=$(VENV)/kernels-x86-64-checked \
	  $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_kernels.py -k "$(PORTABLE_TESTS)"; \
	else echo "test-portable: x86-64 only"; fi
	RNNKIT_BLAS=scipy $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_production.py \
	  -k "$(OPENBLAS_TESTS)"

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
