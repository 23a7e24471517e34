# Rewind's usual targets. Every target bootstraps first (cheap when everything is in place).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: bootstrap test test-long unit fuzz demo demo-undo demo-gitops cluster crd manifests clean bench bench-scale soak test-real-node quickstart-real-node

bootstrap:
	bash scripts/bootstrap.sh

test: bootstrap  ## all tests, against the local control plane and PostgreSQL
	$(PY) -m pytest $(PYTEST_ARGS)

test-long: bootstrap  ## the long tier: API outages of two minutes, the fuzz tier (500 specs per test), scale at 1000 Rollbacks, a 30-minute soak
	REWIND_LONG_TIER=1 $(PY) -m pytest -m long tests/operator $(PYTEST_ARGS)
	REWIND_FUZZ_EXAMPLES=$${REWIND_FUZZ_EXAMPLES:-500} $(PY) -m pytest tests/fuzz --timeout=3600 $(PYTEST_ARGS)
	$(PY) bench/scale.py --rollbacks 1000 --namespaces 20 --rounds 1 --kubectl-parallel 20 --timeout 3600 --tag long
	$(PY) bench/soak.py --minutes $${REWIND_SOAK_MINUTES:-30}

test-real-node: bootstrap  ## the suite against the control plane with one real node (kubelet, containerd, runc; needs root): database Jobs run as real pods
	bash scripts/with-real-node.sh $(PY) -m pytest -ra $(PYTEST_ARGS)

quickstart-real-node: bootstrap  ## the README's quick start (scripts/quickstart.sh) on the test bed's real node: the chart's operator in a real pod rolls back a real Deployment
	bash scripts/with-real-node.sh bash scripts/quickstart.sh

unit: bootstrap  ## tests that need no cluster and no database
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

fuzz: bootstrap  ## the long fuzz tier: 500 generated specs per test (make test runs a short smoke of each)
	REWIND_FUZZ_EXAMPLES=$${REWIND_FUZZ_EXAMPLES:-500} $(PY) -m pytest tests/fuzz --timeout=3600 $(PYTEST_ARGS)

demo: bootstrap  ## the end-to-end demo: the booking app rolled back on the local control plane
	$(PY) examples/booking/demo.py

demo-undo: bootstrap  ## the demo, then the whole rollback undone (kubectl rewind undo) and compared
	$(PY) examples/booking/demo.py --undo

demo-gitops: bootstrap  ## the demo with Argo CD managing the app: its sync suspended, held, resumed by hand
	$(PY) examples/booking/demo.py --gitops

bench: bootstrap  ## benchmarks (not tests): Rewind against the manual alternative, side by side
	$(PY) bench/workload_undo.py
	$(PY) bench/api_requests.py
	$(PY) bench/db_restore.py

soak: bootstrap  ## a soak (not a test): Rollbacks every 2 s for REWIND_SOAK_MINUTES (30) minutes; RSS slope, slowdown, writes
	$(PY) bench/soak.py --minutes $${REWIND_SOAK_MINUTES:-30}

bench-scale: bootstrap  ## the long tier: 100 Rollbacks at once in 10 namespaces against 100 kubectl undos; a cold start over 1000 finished Rollbacks
	$(PY) bench/scale.py --rollbacks 100 --namespaces 10 --rounds 3
	$(PY) bench/cold_start.py --finished 1000 --namespaces 10 --rounds 5

cluster: bootstrap  ## start the local control plane in the foreground; prints how to use kubectl
	.venv/bin/rewind-testbed up

clean:
	rm -rf .venv .pytest_cache

crd: bootstrap  ## render crds/ from the pydantic models, and copy the CRDs into the chart
	.venv/bin/rewind crd --write
	$(PY) scripts/sync_chart.py

manifests: bootstrap  ## render manifests/ from the chart (helm template with the documented values)
	$(PY) scripts/render_manifests.py
