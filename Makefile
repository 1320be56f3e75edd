# vtrace — `make run` starts the main job, `make test` sets everything up
# from scratch (Debian packages, venv, pip packages) and runs every test.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BCC    := $(VENV)/.bcc
PYTEST_ARGS ?=

.PHONY: all setup system-deps test test-unit test-system test-live test-vmlab vmlab lab-soak run bench clean help

all: test

help:
	@echo "make run    start vtrace on the best available source (live, else the simulator)"
	@echo "make test   install everything needed and run the unit, system, live and vmlab tiers"
	@echo "make bench  pipeline benchmarks (results in bench/results/)"

setup: $(STAMP) $(BCC)

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# bcc is pure Python over libbcc.so: expose only that package to the venv
# (not all of Debian's dist-packages) through a .pth file.
$(BCC): $(STAMP) | system-deps
	mkdir -p $(VENV)/bcc-shim
	ln -sfn /usr/lib/python3/dist-packages/bcc $(VENV)/bcc-shim/bcc
	echo "$(abspath $(VENV)/bcc-shim)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/vtrace-bcc.pth"
	$(PY) -c 'import bcc'
	touch $@

# The lab's QEMU runs each guest on one host thread (tests/vmlab/lab.py, TCG):
# two lab files boot at once, one per core (a file's boots stay on one worker).
VMLAB_JOBS ?= 2
VMLAB   = -n $(VMLAB_JOBS) --dist loadfile

test: setup
	$(PY) -m pytest tests/unit tests/system tests/live $(PYTEST_ARGS)
	$(PY) -m pytest tests/vmlab $(VMLAB) $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-system: setup
	$(PY) -m pytest tests/system $(PYTEST_ARGS)

test-live: setup
	$(PY) -m pytest tests/live $(PYTEST_ARGS)

test-vmlab: setup
	$(PY) -m pytest tests/vmlab $(VMLAB) $(PYTEST_ARGS)

# The lab: Debian's stock kernel under QEMU, running vtrace live against real
# vhost-net and vhost-vsock (user-space VMMs), vfio-pci with QEMU's edu device
# behind its Intel IOMMU, the guest's own virtio-blk, and (the realvm tier) two
# real QEMU/KVM guests nested in the 6.1 and 6.12 labs (tests/vmlab; the
# kernel is cached in /var/tmp/vtrace-lab).
vmlab: test-vmlab

# Boot the lab BOOTS times (JOBS at a time) attaching every probe point while
# its own virtio devices are busy: none may hang (tests/vmlab/soak.py).
BOOTS ?= 20
JOBS  ?= 2
lab-soak: setup
	$(PY) -m tests.vmlab.soak $(BOOTS) $(JOBS)

run: setup
	$(VENV)/bin/vtrace top

bench: setup
	@scripts/install-system-deps.sh bench
	$(PY) bench/pipeline.py
	$(PY) bench/check.py
	$(PY) bench/qemulog.py
	$(PY) bench/bpf_ops.py
	$(PY) bench/live.py
	$(PY) bench/ringbuf.py
	$(PY) bench/export.py
	$(PY) bench/top.py
	$(PY) bench/vhost_pps.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info bench/results
