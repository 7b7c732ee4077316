# Harmonixr: make demo (install + whole pipeline on the built-in corpus), make test.
VENV    ?= .venv
PY      := $(VENV)/bin/python
HX      := $(VENV)/bin/harmonixr
# DATA: a corpus folder, or 'builtin' (music21's corpus). GiantMIDI's folder is used when present.
DATA    ?= $(if $(wildcard ./surname_checked_midis),./surname_checked_midis,builtin)
CACHE   ?= cache/$(notdir $(DATA))
RUN     ?= runs/$(notdir $(DATA))
WORKERS ?= 2
TRAIN_ARGS ?=
# TORCH_INDEX: the package index torch is installed from, passed to pip as --index-url. Empty
# (the default): pip's usual index (PyPI's build for this platform; on Linux x86-64 the CUDA one).
# CPU only: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: install preprocess info train demo pretrained test lint format clean reinstall bench \
	serve screenshots

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

preprocess: install
	$(HX) preprocess $(DATA) --out $(CACHE) --workers $(WORKERS)

info: install
	$(HX) info $(CACHE)

train: preprocess
	$(HX) train --data $(CACHE) --out $(RUN) $(TRAIN_ARGS)

# demo: the whole pipeline on the built-in corpus (~70 s conversion once, ~2 min training on 2 cores)
DEMO_CACHE ?= cache/builtin
DEMO_RUN   ?= runs/demo
demo: install
	$(HX) preprocess builtin --out $(DEMO_CACHE) --workers $(WORKERS)
	$(HX) info $(DEMO_CACHE)
	rm -rf $(DEMO_RUN)
	$(HX) train --data $(DEMO_CACHE) --out $(DEMO_RUN) --preset small --max-steps 600 \
		--steps-per-epoch 100 --batch-size 32 --crop-seconds 30
	$(HX) evaluate $(DEMO_RUN)
	$(HX) viz tsne $(DEMO_RUN) --data $(DEMO_CACHE)
	$(HX) viz filters $(DEMO_RUN)
	$(HX) viz curves $(DEMO_RUN)
	@echo "Who wrote these? Four scores from music21's corpus, asked of the shipped model."
	@echo "First a Bach chorale, whose music the index does not hold: its first line says so, and the table"
	@echo "is the model's own guess from the notes (calibrated probabilities over the composers it can"
	@echo "name, most probable first: the answer; 'similarity' is the cosine to that composer's centre)."
	@echo "It learnt keyboard music, not four-part choral writing: expect a miss on the chorale."
	@m=$$($(PY) -c "import music21, os; print(os.path.dirname(music21.__file__))")/corpus; \
	$(HX) attribute $$m/bach/bwv66.6.mxl --k 3 || exit 1
	@echo "Then three keyboard works the index holds in other editions: the first line names each"
	@echo "(probability fitted on validation; measured held out in docs/pretrained-eval/measure.md)"
	@echo "and the answer follows from it. Right answers: Joplin, Mozart, Chopin."
	@m=$$($(PY) -c "import music21, os; print(os.path.dirname(music21.__file__))")/corpus; \
	for f in joplin/maple_leaf_rag.mxl mozart/k545/movement1_exposition.mxl chopin/mazurka06-2.krn; do \
		$(HX) attribute $$m/$$f --k 3 || exit 1; done
	@echo "Web page: $(HX) serve   then open http://localhost:8000/  (the shipped model)"
	@echo "  the demo run there: $(HX) index build $(DEMO_RUN) --data $(DEMO_CACHE) && $(HX) serve --model $(DEMO_RUN)   ('make maps' adds its map)"
	@echo "TensorBoard logs: $(DEMO_RUN)/tb   (tensorboard --logdir $(DEMO_RUN)/tb)"
	@echo "Evaluation: $(DEMO_RUN)/eval/test/report.md, roc.png, det.png, distances.png"

# maps: the pictures of a run (default the demo's) in RUN/viz; each command prints its files
MAPS_RUN   ?= $(DEMO_RUN)
MAPS_CACHE ?= $(DEMO_CACHE)
.PHONY: maps
maps: install
	$(HX) viz tsne $(MAPS_RUN) --data $(MAPS_CACHE)
	$(HX) viz filters $(MAPS_RUN)
	$(HX) viz curves $(MAPS_RUN)

# serve: the web page on http://127.0.0.1:8000/ (the shipped model, or SERVE_MODEL=RUN with an
# index: harmonixr index build RUN --data CACHE; a map from 'make maps' is shown when present)
SERVE_MODEL ?=
serve: install
	$(HX) serve $(if $(SERVE_MODEL),--model $(SERVE_MODEL))

# screenshots: the page in headless Chromium on the tests' tiny run → docs/screenshots/
screenshots: install
	HARMONIXR_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q tests/test_serve.py -k page_drop

# pretrained: the model shipped in the package (docs/model-card.md), from ASAP's performances and
# the score corpus: make pretrained ASAP=path/to/asap-dataset SCORES=path/to/scores
# It is fold 0 of a 10-fold plan: 80 % of the units train it, 10 % (validation) calibrate it,
# 10 % (its test side) give its own figures (RUN/report-folds-0.md, copied to
# docs/pretrained-eval/) and its corpus map (map/, for the page). The recipe is
# configs/pretrained.toml; weights at most 10 MB, the folder at most 16 MB.
ASAP            ?=
SCORES          ?=
PRETRAINED_CACHE ?= cache/multi
PRETRAINED_RUN   ?= runs/pretrained
PRETRAINED_HEAD  ?= runs/pretrained-head
PRETRAINED_DIR   := src/harmonixr/pretrained
CV_GROUP  ?= runs/cv-group
CV_UNSEEN ?= runs/cv-unseen

pretrained: install
	@test -n "$(ASAP)" -a -n "$(SCORES)" || { echo "usage: make pretrained ASAP=path/to/asap-dataset SCORES=path/to/scores" >&2; exit 2; }
	$(HX) preprocess $(ASAP) $(SCORES) --out $(PRETRAINED_CACHE) --workers $(WORKERS)
	OMP_NUM_THREADS=2 $(HX) evaluate $(PRETRAINED_RUN) --folds 10 --fold 0 --data $(PRETRAINED_CACHE) --config configs/pretrained.toml --resamples 300 --no-baselines
	@# second stage: the statistics branch (512 wide) and whole-piece head over fold 0's encoder;
	@# statistics only, the arm chosen on validation and with ASAP's performances held out
	@# (docs/experiments.md §6c)
	rm -rf $(PRETRAINED_HEAD)
	OMP_NUM_THREADS=2 $(HX) train-head $(PRETRAINED_RUN)/fold-0 --data $(PRETRAINED_CACHE) --out $(PRETRAINED_HEAD) --branches stats --hidden 512
	@# the shipped split must come back file for file (content hash → side and group), unless
	@# it was grouped by an older rule (its header's "groups"): then the rebuilt one replaces it
	if [ -f $(PRETRAINED_DIR)/split.json ]; then $(PY) -c "from harmonixr.data.splits import compare_manifests as c; \
	print(c('$(PRETRAINED_DIR)/split.json', '$(PRETRAINED_RUN)/fold-0/split.json'))"; fi
	@# the index (calibration on train and validation; "someone else" from simulated strangers),
	@# measured held out: where "someone else" misses the bar there it is withdrawn as an answer;
	@# the answer's temperature of least ECE on validation, the rule `index calibrators` chose
	@# on the 5-fold cross-validation's held-out pieces (docs/experiments.md §8)
	$(HX) index build $(PRETRAINED_HEAD) --data $(PRETRAINED_CACHE) --relative-to $(abspath $(ASAP)/..) --temperature ece
	OMP_NUM_THREADS=2 $(HX) index measure $(PRETRAINED_HEAD) --data $(PRETRAINED_CACHE) --out docs/pretrained-eval
	@# its own figures on its test side, beside the tuned baselines
	OMP_NUM_THREADS=2 $(HX) evaluate $(PRETRAINED_HEAD) --data $(PRETRAINED_CACHE) --resamples 300
	@# the corpus map the page shows (every piece of the cache; its pictures stay in the run)
	OMP_NUM_THREADS=2 $(HX) viz tsne $(PRETRAINED_HEAD) --data $(PRETRAINED_CACHE) --out $(PRETRAINED_HEAD)/viz
	rm -rf $(PRETRAINED_DIR)/index $(PRETRAINED_DIR)/map $(PRETRAINED_DIR)/model.safetensors $(PRETRAINED_DIR)/config.json
	cp $(PRETRAINED_HEAD)/model.safetensors $(PRETRAINED_HEAD)/config.json $(PRETRAINED_HEAD)/head_log.json $(PRETRAINED_DIR)/
	cp -r $(PRETRAINED_HEAD)/index $(PRETRAINED_DIR)/index
	rm -f $(PRETRAINED_DIR)/index/.*.tmp*
	@# the map alone, compact (half-precision embeddings, ~1.3 MB), paths under the corpora's folder
	$(PY) -c "from harmonixr.viz.tsne import CorpusMap as M; M.load('$(PRETRAINED_HEAD)/viz/map') \
	.rebased('$(abspath $(ASAP)/..)').save('$(PRETRAINED_DIR)/map', compact=True)"
	$(PY) -c "import json, sys; from harmonixr.data.splits import portable_manifest as p; \
	m = p(json.load(open('$(PRETRAINED_HEAD)/split.json')), '$(abspath $(ASAP)/..)'); \
	open('$(PRETRAINED_DIR)/split.json', 'w').write(json.dumps(m, separators=(',', ':')))"
	mkdir -p docs/pretrained-eval && cp $(PRETRAINED_HEAD)/eval/test/report.json $(PRETRAINED_HEAD)/eval/test/report.md docs/pretrained-eval/
	@# the weights at most 10 MB; with the index (vectors, metadata, calibration, melodic
	@# sketches) and the corpus map at most 16 MB
	@$(PY) -c "import pathlib, sys; d = pathlib.Path('$(PRETRAINED_DIR)'); \
	n = sum(f.stat().st_size for f in d.rglob('*') if f.is_file()); \
	w = (d / 'model.safetensors').stat().st_size; \
	print(f'{d}: {n / 1e6:.2f} MB, weights {w / 1e6:.2f} MB'); sys.exit(w > 10e6 or n > 16e6)"
	$(HX) index info

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/ruff check src tests bench

format: install
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

bench: install
	$(PY) bench/preprocess.py

clean:
	rm -rf cache runs .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

reinstall:
	rm -rf $(VENV)
	$(MAKE) install
