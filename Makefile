# Deep Generative Models, from probability to normalizing flows: build, test and teaching commands.
# The two commands a new user needs:   make book    and    make test
# Both create the pinned environment first when it is missing (scripts/setup_env.sh).

SHELL := /bin/bash
PY    := .venv/bin/python
BIN   := .venv/bin
ENV_STAMP := .venv/.setup-stamp

.PHONY: help env system book book-strict pdf test test-unit test-notebooks test-book test-grading lint \
        refresh student-versions lock bench bench-budget bench-grading train-ch05-toys train-ch06 train-ch07 release collect autograde feedback grades clean

help:            ## list the targets
	@grep -E '^[a-z0-9-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | expand -t 18

env:             ## create/refresh .venv from requirements/lock.txt and MathJax from package-lock.json
	@scripts/setup_env.sh

system: env      ## also install the Debian tools the tests use (chromium, bubblewrap, postgresql, poppler-utils)
	@scripts/setup_env.sh --system

book: env        ## build the HTML book into _build/html (strict: warnings and broken refs fail)
	@scripts/build_book.sh

pdf: system      ## the book as one PDF: _build/pdf/dgm-flows.pdf (single-page build printed by Chromium; 2-4 min)
	@scripts/build_pdf.sh

test: system     ## run every test: lint, library, grading pipeline, notebooks (nbval), book build + browser checks
	@scripts/run_tests.sh

lint: env        ## ruff on flowlib/, tests/, course_tools/, benchmarks/
	$(BIN)/ruff check $$(ls -d flowlib tests course_tools benchmarks scripts 2>/dev/null)

refresh: env     ## re-execute every lecture notebook in place (refresh committed outputs); NB=path for one
	@$(PY) scripts/refresh_notebooks.py $(NB)

student-versions: env  ## regenerate assignments/ (student versions) from solutions/ with nbgrader
	$(PY) -m course_tools generate

lock:            ## re-resolve requirements/requirements.in into requirements/lock.txt in a scratch venv
	@scripts/lock.sh

bench: env       ## flowlib vs normflows/nflows/zuko (separate .venv-bench; see benchmarks/README.md)
	bash benchmarks/setup_bench_env.sh && mkdir -p artifacts && .venv-bench/bin/python benchmarks/flows.py --json artifacts/bench.json

bench-budget: env  ## digits at 2000 steps: does the 300-step ranking of RESULTS.md survive a longer budget?
	bash benchmarks/setup_bench_env.sh && mkdir -p artifacts && .venv-bench/bin/python benchmarks/flows.py \
	  --skip-speed --datasets digits --archs realnvp maf --steps 2000 --val-every 100 --patience 3 \
	  --json artifacts/bench_budget.json --out benchmarks/RESULTS_budget.md

bench-grading: system  ## autograde 50 generated submissions and time it
	$(PY) benchmarks/autograde.py

train-ch05-toys: env  ## lecture 5.3's toy-flow study (4 densities x 5 settings x 3 seeds); writes chapters/05_normalizing_flows/checkpoints/toy_* (24 min, one core of a shared 2-core CPU)
	nice -n 10 $(PY) scripts/train_ch05_toy_flows.py

train-ch06: env  ## retrain chapter 6's NICE, RealNVP, Glow (3 seeds each, one protocol) and write chapters/06_image_flows/checkpoints/ (21 min wall on the shared 2-core machine, load 7-12); the table alone: scripts/train_ch6.py --table-only
	nice -n 10 $(PY) scripts/train_ch6.py --jobs 2

train-ch07: env  ## retrain chapter 7's comparison (coupling, i-ResNet + ActNorm, CNF; 3 seeds each) and write chapters/07_residual_continuous/results/ (15 min on one thread of the shared 2-core CPU, load 7-9); the table alone: scripts/train_ch7.py --evaluate
	nice -n 10 $(PY) scripts/train_ch7.py

.PHONY: train-ch06-mnist
train-ch06-mnist: env  ## retrain lecture 6.4's MNIST Glow (3 seeds); writes chapters/06_image_flows/checkpoints/mnist/ (20.5 min wall on a shared 2-core CPU, load average 6-9)
	nice -n 10 $(PY) scripts/train_ch06_mnist.py

# Instructors (see instructors.md): A=<assignment> (default: all), S=<student> (default: all)
release: env     ## release assignment A to the exchange
	$(PY) -m course_tools release $(A)

collect: env     ## collect submissions of assignment A from the exchange
	$(PY) -m course_tools collect $(A)

autograde: system  ## autograde assignment A (or all) for student S (or all), sandboxed
	$(PY) -m course_tools autograde $(or $(A),all) $(if $(S),--student $(S))

feedback: env    ## generate and release feedback for assignment A (hidden tests stay hidden)
	$(PY) -m course_tools feedback $(A) $(if $(S),--student $(S))

grades: env      ## export all grades to $$COURSE_DIR/grades.csv
	$(PY) -m course_tools export

clean:           ## remove build outputs (keeps the environments)
	rm -rf _build artifacts
