# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch / torchvision pair pinned for this project's development machine (CPU only: other
# pairs fail to install there; the GPU figures in the docs came from the GPU machines' own torch
# 2.11); pyproject keeps open ranges.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
DATA ?= data/synthetic
# The suite runs in one pytest-xdist process per core (at most 8), each test handed to whichever
# process is free (worksteal: a few tests take 10-20 s); TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= auto
PYTEST_PARALLEL := -n $(TEST_WORKERS) --maxprocesses 8 --dist worksteal

.PHONY: install test test-quick test-gpu demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Every CPU test: the default suite in parallel, then the `slow` ones (real SIGTERMs and resumes,
# inductor, every backbone x temporal module, one-epoch runs of each dataset's config) in this
# process: several start processes or threads of their own, and two of them at a time took
# longer (3 min 54 s against 3 min 3 s on two cores). CI runs this.
test: test-quick
	$(PY) -m pytest -q -m slow

# The default suite alone (what to run while editing).
test-quick: install
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

test-gpu: install
	$(PY) -m pytest -q -m gpu

# Synthetic EPIC-format data (if absent), GSF trained on CPU, then the validation split scored
# through the submission path and printed as a verb / noun / action table.
DEMO_CONFIG ?= configs/synthetic/gsf_resnet18.yaml
DEMO_RUN ?= runs/synthetic/gsf_resnet18
demo: install
	@test -f $(DATA)/annotations/EPIC_100_train.csv || $(VENV)/bin/gsf synth --out $(DATA) --no-videos
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/gsf fit --config $(DEMO_CONFIG) --data.init_args.root $(DATA) --trainer.default_root_dir $(DEMO_RUN)
	$(VENV)/bin/gsf predict --config $(DEMO_CONFIG) --data.init_args.root $(DATA) --trainer.default_root_dir $(DEMO_RUN) \
		--data.init_args.predict_split val --ckpt_path $(DEMO_RUN)/checkpoints/last.ckpt --submission.output $(DEMO_RUN)/validation.zip
	$(VENV)/bin/gsf evaluate $(DEMO_RUN)/validation.zip $(DATA)/annotations/EPIC_100_validation.csv --json $(DEMO_RUN)/validation_metrics.json

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
