# Entry points. `make demo` runs the local demo of the whole system, `make test`
# runs every test tier this machine can run. Both install what they need.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
PYTEST := $(PYTHON) -m pytest -p no:cacheprovider -rs
RESULTS := build/test-results
LAB_TIMEOUT ?= 2400

.PHONY: all venv lab k8s bench-setup test test-unit test-kernel test-cluster e2e test-image test-kind \
        demo cluster bench bench-smoke image clean

all: test

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q -U pip
	$(PYTHON) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The lab VM: qemu, busybox, ipvsadm, nftables and the Debian kernel with IPVS.
lab: venv
	bash lab/setup.sh

# etcd, kube-apiserver, kube-controller-manager, kubectl from Go modules (cached).
k8s: venv
	bash cluster/build.sh

# The benchmark peers (keepalived; ipvsadm comes with the lab).
bench-setup:
	bash bench/setup.sh

test-unit: venv
	@mkdir -p $(RESULTS)
	$(PYTEST) tests/unit -q --junitxml=$(RESULTS)/unit.xml

# The kernel tier runs inside the lab VM: a real IPVS kernel, real traffic.
test-kernel: lab bench-setup
	@mkdir -p $(RESULTS)
	$(PYTHON) -m lvs_lab run --timeout $(LAB_TIMEOUT) -- \
	  $(PYTHON) -m pytest -p no:cacheprovider -rs tests/kernel -q --junitxml=$(RESULTS)/kernel.xml

# The control-plane tier: real etcd + kube-apiserver + kube-controller-manager.
test-cluster: venv k8s
	@mkdir -p $(RESULTS)
	$(PYTEST) tests/cluster -q --junitxml=$(RESULTS)/cluster.xml

# End to end: API server + operator on the host, agents and traffic in the VM;
# the agents run from the image's root filesystem (KUBE_LVS_E2E_AGENT=venv: from
# the virtualenv, without building the image).
e2e: lab k8s $(if $(filter venv,$(KUBE_LVS_E2E_AGENT)),,image)
	@mkdir -p $(RESULTS)
	$(PYTEST) tests/e2e -q --junitxml=$(RESULTS)/e2e.xml

# The container image, built with Debian's Docker engine and no registry (skipped
# when the image carries the hash of its inputs).
image:
	bash deploy/image/build.sh

test-image: venv
	@mkdir -p $(RESULTS)
	$(PYTEST) tests/image -q --junitxml=$(RESULTS)/image.xml

# Opt-in: needs Docker with a network (kind pulls its node image).
test-kind: venv
	KUBE_LVS_KIND=$${KUBE_LVS_KIND:-1} $(PYTEST) tests/kind -q

test: venv
	@rm -rf $(RESULTS); mkdir -p $(RESULTS)
	@rc=0; \
	$(MAKE) --no-print-directory test-unit || rc=1; \
	$(MAKE) --no-print-directory test-kernel || rc=1; \
	$(MAKE) --no-print-directory test-cluster || rc=1; \
	$(MAKE) --no-print-directory test-image || rc=1; \
	$(MAKE) --no-print-directory e2e || rc=1; \
	$(PYTEST) tests/kind -q --junitxml=$(RESULTS)/kind.xml || rc=1; \
	$(PYTHON) tests/summarize.py $(RESULTS); \
	exit $$rc

# The main job: the whole system in the lab, for a newcomer (KEEP=1 leaves it up).
demo: lab k8s
	$(PYTHON) -m lvs_e2e.demo $(if $(KEEP),--keep,)

# A control plane for people: prints KUBECONFIG, Ctrl-C stops it.
cluster: venv k8s
	$(PYTHON) -m lvs_cluster up

# Benchmarks side by side with ipvsadm-restore and keepalived (results in bench/results/).
bench: lab bench-setup
	bash bench/run.sh

bench-smoke: lab bench-setup
	bash bench/run.sh --smoke

clean:
	rm -rf build $(VENV)
