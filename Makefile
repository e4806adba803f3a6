# Two commands set up everything on a fresh machine:
#   make book   executes the notebooks on the embedded model and builds the book (_build/html)
#   make test   unit tests, the staleness guard, a spot check, nbval over the notebooks, a book build
# Both read the published results (results/) where the local store has nothing: minutes, not hours.
# Each target installs what it needs first and is quick when nothing changed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.skillgraft-installed
export SKILLGRAFT_HOME ?= $(HOME)/.cache/skillgraft
export PYDEVD_DISABLE_FILE_VALIDATION := 1
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE ?= 1
# tcmalloc, where the machine has it (Debian: libtcmalloc-minimal4): torch's CPU steps run faster and
# peak lower than under glibc's allocator, with bit-identical results (alignment is torch's own).
TCMALLOC := $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4 /usr/lib/libtcmalloc_minimal.so.4))
ifneq ($(TCMALLOC),)
export LD_PRELOAD := $(TCMALLOC)$(if $(LD_PRELOAD), $(LD_PRELOAD))
export TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD ?= 68719476736
else
$(info tcmalloc not found: torch runs on glibc's allocator, same results, about 1.2x slower on a 2-core CPU (Debian: apt-get install libtcmalloc-minimal4))
endif

.PHONY: setup assets book test unit guard spotcheck compute nbval publish grid cost reproduce bench fidelity answers survey clean

setup: $(STAMP) assets

# torch==2.13.0 is pinned first, with pip: that release is a CPU wheel; an unpinned torch pulls a multi-GB CUDA
# build. The rest comes through uv where the registry has it (same packages as pip resolves, in seconds rather
# than minutes: its downloads run side by side), else (or if it fails) through pip.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet uv && $(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[book,test]" \
	  || $(BIN)/pip install --quiet -e ".[book,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (skillgraft)" >/dev/null
	touch $(STAMP)

assets: $(STAMP)
	$(BIN)/skillgraft fetch

book: setup
	$(BIN)/skillgraft book

unit: setup
	$(BIN)/pytest tests

# The staleness guard (seconds, no model): every page's parameters, every published entry and the answers page
# (book/answers.ipynb: the teaching page's commands, the chapters' defaults) match this code.
guard: setup
	$(BIN)/skillgraft publish --check

# One chain of chapter 01's grid (a fine-tune, its graft, their predictions) recomputed from nothing and
# compared with the published entries: bit for bit on this machine kind.
spotcheck: guard
	$(BIN)/skillgraft spotcheck

# Each chapter executed into runs/compute (never over the book's notebooks), computing what neither the local
# store nor the published results hold. (`skillgraft sweep` fills the same store in parallel on a machine with
# more cores than one run uses; each step is computed with, and keyed by, the thread count a run uses here.)
compute: setup
	@for nb in notebooks/[0-9][0-9]_*.ipynb; do $(BIN)/skillgraft run $$nb --output-dir runs/compute || exit 1; done

# nbval re-executes the notebooks and compares every table and printed result with the committed outputs; it
# may only read (SKILLGRAFT_COMPUTE=never): a step that is not published fails at once, naming `make publish`.
# On a busy machine the kernels' torch threads wait passively (skillgraft/machine.py), as under `skillgraft run`.
nbval: guard
	env SKILLGRAFT_COMPUTE=never $$($(BIN)/python -m skillgraft.machine) $(BIN)/pytest --nbval-lax --sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider notebooks book/variance.ipynb book/results.ipynb book/protocol.ipynb book/survey.ipynb

# Everything the book's pages resolve, computed where missing and published into results/ (then commit it).
publish: setup
	$(BIN)/skillgraft publish

# The grid behind the verdicts (configs/grid/: eight tasks, five families, three seeds), swept one unit at a time
# (chapter 04 whole, then per task everything that starts from its fine-tunes) and published after each unit
# (`publish --stored`): a stopped run loses at most the unit it was in, and a rerun skips what is published.
# Hours on two cores; commit results/ as it grows. `skillgraft grid --dry-run` lists the units.
grid: setup
	$(BIN)/skillgraft grid

# What the published results cost, per chain (a fine-tune, its grafts, their predictions) and in all, from the
# wall time each step recorded where it was computed (kept in results/MANIFEST.json).
cost: setup
	$(BIN)/python benchmarks/grid_cost.py --out benchmarks/results/grid_cost.md

# Everything from nothing, part by part (the grid's units, then the survey): each part's pages computed with the
# published results off, in a store of its own, and compared with results/ (bit for bit on this machine kind); a
# part that matches is recorded in results/REPRODUCED.json (commit it), so that a reproduction stopped on one
# machine goes on from the next part on another. Once every part is recorded, nbval against the same committed
# notebooks, reading the reproduction's store, then results/ (each entry of which was recomputed and found equal).
# Hours on two cores; `skillgraft reproduce --check` says what is left; `make reproduce FRESH=1` starts again.
reproduce: setup
	$(if $(FRESH),rm -rf "$(SKILLGRAFT_HOME)/reproduce" results/REPRODUCED.json)
	$(BIN)/skillgraft reproduce --store "$(SKILLGRAFT_HOME)/reproduce"
	$(BIN)/skillgraft reproduce --check
	env SKILLGRAFT_COMPUTE=never SKILLGRAFT_STORE="$(SKILLGRAFT_HOME)/reproduce" $$($(BIN)/python -m skillgraft.machine) $(BIN)/pytest --nbval-lax --sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider notebooks book/variance.ipynb book/results.ipynb book/protocol.ipynb book/survey.ipynb

test: unit guard spotcheck nbval
	$(BIN)/skillgraft book --no-execute

# Speed and memory ratios in one run (about 10 minutes; run it with nothing else on the machine).
bench: setup
	$(BIN)/python benchmarks/graft_speed.py | tee benchmarks/results/speed.md

# fp32 against bf16 on chapter 01's settings, each from an empty store (about half an hour).
fidelity: setup
	$(BIN)/python benchmarks/precision_fidelity.py --out benchmarks/results/precision_fidelity.txt

# The teaching page's exercises, each run as its command says, into book/answers.ipynb (committed with
# its outputs; the solutions glue their measured answers from it). About an hour with the book's store warm.
answers: setup
	$(BIN)/python -c "from pathlib import Path; from skillgraft import cli; p = Path('book/answers.ipynb'); cli.execute(p, p, {})"

# The task survey (book/survey.ipynb, committed with its outputs; the data page glues from it): every offline task
# fine-tuned once and compared with zero-shot, and what a fine-tuning step costs. About 40 minutes from an empty store.
survey: setup
	$(BIN)/python -c "from pathlib import Path; from skillgraft import cli; p = Path('book/survey.ipynb'); cli.execute(p, p, {})"

clean:
	rm -rf _build runs
