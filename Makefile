# branchfs — every target installs what it needs on a fresh Debian machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev fuse-overlayfs git sqlite3 attr
STAMP_APT := $(VENV)/.apt-done
STAMP_PY := $(VENV)/.py-done
STAMP_NATIVE := $(VENV)/.native-$(if $(filter-out 0,$(BRANCHFS_PURE)),pure,compiled)
# setup.py compiles the hot modules (mypyc) into .so files beside their .py; any source
# newer than the last build rebuilds them (only the changed C is recompiled), so every target
# runs the current source. BRANCHFS_PURE=1 make install: no compiled modules (slower).
NATIVE_SOURCES := setup.py $(wildcard branchfs/*.py branchfs/*/*.py fuse/*.py)
STAMP_DOCS := $(VENV)/.docs-done

.PHONY: all install demo test test-wheel test-merge-long test-random mutate lint format docs bench bench-core \
	bench-fuse bench-bestof bench-cli clean

all: test

$(STAMP_APT):
	@mkdir -p $(VENV)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

# The editable install itself builds pure (BRANCHFS_PURE=1); $(STAMP_NATIVE) compiles.
$(STAMP_PY): $(STAMP_APT) pyproject.toml
	@[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip 2>&1 | grep -v WARNING || true
	@BRANCHFS_PURE=1 $(BIN)/pip install -q -e '.[dev]' 2>&1 | grep -v WARNING || true
	@$(BIN)/python -c "import branchfs, branchfs_fuse.daemon, lmdb, xxhash, hypothesis, pytest" 
	@touch $@

$(STAMP_NATIVE): $(STAMP_PY) $(NATIVE_SOURCES)
	@if [ -n "$$BRANCHFS_PURE" ] && [ "$$BRANCHFS_PURE" != 0 ]; then \
	  echo "BRANCHFS_PURE is set: removing the compiled modules; branchfs runs as plain Python (slower)"; \
	  BRANCHFS_PURE=1 $(BIN)/python setup.py -q build_ext --inplace 2>&1 | grep -v BRANCHFS_PURE; \
	else \
	  echo "compiling the hot modules with mypyc (setup.py; BRANCHFS_PURE=1 to skip)"; \
	  log=$$(mktemp); $(BIN)/python setup.py build_ext --inplace >$$log 2>&1 \
	    || { cat $$log; rm -f $$log; echo "make install: compiling failed (see above)"; exit 1; }; \
	  rm -f $$log; \
	  $(BIN)/python -c "import branchfs.meta as m, sys; sys.exit(not m.__file__.endswith('.so'))" \
	    || { echo "make install: branchfs.meta did not import compiled"; exit 1; }; \
	fi
	@rm -f $(VENV)/.native-*; touch $@

install: $(STAMP_NATIVE)

$(STAMP_DOCS): $(STAMP_PY)
	@$(BIN)/pip install -q -e '.[dev,docs]' 2>&1 | grep -v WARNING || true
	@$(BIN)/python -c "import mkdocs, material, mkdocstrings, mkdocs_click, matplotlib"
	@touch $@

# The documentation site (mkdocs-material) in site/; --strict turns every warning into an error.
docs: $(STAMP_DOCS)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

demo: install
	$(BIN)/python -m branchfs.demo

test: install
	@$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc = 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$rc

# merges against git as the oracle: a long random profile (make test runs a fixed seed)
test-merge-long: install
	BRANCHFS_MERGE_LONG=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_merge_git.py

# The compiled wheel a user's `pip install` builds, installed into a fresh venv and run there
# (make test checks the wheel's contents from a quick pure build).
test-wheel: install
	BRANCHFS_TEST_COMPILED_WHEEL=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_packaging.py

# The randomized tests with a new seed each run and 5x their examples (make test uses fixed
# seeds). A failure prints the seed: keep the failing case as a test (tests/randomized.py).
RANDOM_TESTS := tests/test_model.py tests/fuse/test_posix_differential.py tests/test_crash.py \
	tests/test_tree.py
test-random: install
	@seed=$${BRANCHFS_SEED:-$$RANDOM$$RANDOM}; \
	echo "BRANCHFS_SEED=$$seed (replay: make test-random BRANCHFS_SEED=$$seed)"; \
	HYPOTHESIS_PROFILE=random BRANCHFS_SEED=$$seed \
	BRANCHFS_EXAMPLES_SCALE=$${BRANCHFS_EXAMPLES_SCALE:-5} \
	$(BIN)/python -m pytest -q -p no:cacheprovider --hypothesis-seed=$$seed $(RANDOM_TESTS)

# Plant each kept mutant (tools/mutants.py) and run its tests: the score and the survivors.
mutate: install
	$(BIN)/python tools/mutate.py

lint: install
	@! git grep -nE '^(<<<<<<<|>>>>>>>)( |$$)' -- ':!*.venv*' || { echo "merge conflict markers left in the files above"; exit 1; }
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python tools/layering.py

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: bench-core bench-fuse bench-bestof bench-cli

bench-core: install
	$(BIN)/python benchmarks/core.py

bench-fuse: install
	$(BIN)/python benchmarks/fuse.py

bench-bestof: install
	$(BIN)/python benchmarks/bestof.py

bench-cli: install
	$(BIN)/python benchmarks/cli.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
	find branchfs fuse -name '*.so' -delete
