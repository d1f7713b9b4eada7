# Every target first installs what its job needs and is missing (tools/setup_env.sh is
# idempotent): `make demo` only the classification stack; the OpenMMLab stack (and its mmcv
# build) comes with demo-det/demo-seg, the export runtimes with demo-export/demo-edge, and
# `make test` installs everything.
PY := .venv/bin/python
DATA ?= data
SETUP := bash tools/setup_env.sh

.PHONY: install demo demo-det demo-seg demo-search demo-export demo-edge demo-ablate demo-finetune test records peers gpu-check clean

install:
	@$(SETUP) all

demo:
	@$(SETUP) classification
	$(PY) tools/demo_cls.py --data $(DATA)/toy_cls

demo-det:
	@$(SETUP) classification dense
	$(PY) tools/demo_dense.py det --data $(DATA)

demo-seg:
	@$(SETUP) classification dense
	$(PY) tools/demo_dense.py seg --data $(DATA)

demo-search:
	@$(SETUP) classification
	$(PY) tools/demo_search.py --data $(DATA)/toy_cls

demo-export:
	@$(SETUP) classification export
	$(PY) tools/demo_export.py --data $(DATA)

demo-edge:
	@$(SETUP) classification export
	$(PY) tools/demo_edge.py --data $(DATA)

demo-ablate:
	@$(SETUP) classification
	$(PY) tools/demo_ablate.py --data $(DATA)

demo-finetune:
	@$(SETUP) classification
	$(PY) tools/demo_finetune.py --data $(DATA)

# Two pytest-xdist workers (TEST_WORKERS=0: no workers, one process), each taking whole test files so
# that module fixtures are built once, the slowest files first (tests/conftest.py: SLOW_FIRST);
# the 25 slowest tests are listed at the end.
TEST_WORKERS ?= 2
test:
	@$(SETUP) all
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 tests

peers:
	@$(SETUP) classification export
	$(PY) tools/benchmark_peers.py --runtimes executorch --threads 1
	$(PY) tools/benchmark_peers.py --runtimes openvino --threads 1
	$(PY) tools/benchmark_peers.py --runtimes onnxruntime --threads 1
	$(PY) tools/benchmark_peers.py --runtimes litert --threads 1
	$(PY) tools/make_records.py

gpu-check:
	@$(SETUP) classification dense export
	$(PY) tools/gpu_check.py

records:
	@$(SETUP) core
	$(PY) tools/make_records.py

clean:
	rm -rf work_dirs runs artifacts lightning_logs
