# Two commands do all set-up: `make scenario NAME=...` and `make test`.
# Both install what is missing (Debian packages, a virtualenv with the
# project); the guest image is built on first use and cached.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ORCH   := $(VENV)/bin/mce-orchestrator
STAMP  := $(VENV)/.installed-stamp

# What the host needs: QEMU, the tools that build the guest image and the
# probe, and Python's venv module.
HOST_PACKAGES := qemu-system-x86 qemu-system-data busybox-static dropbear-bin \
                 openssh-sftp-server openssh-client cpio zstd gzip binutils e2fsprogs \
                 gcc libc6-dev musl-tools python3 python3-venv make \
                 libvirt-daemon-system libvirt-dev pkg-config mmdebstrap qemu-utils \
                 openssh-server

NAME   ?=
KERNEL ?=
ARGS   ?=
# A kernel you built (a bzImage, a vmlinux or a build tree) and its INSTALL_MOD_PATH.
KERNEL_PATH ?=
MODULES     ?=
KERNEL_ARGS := $(if $(KERNEL_PATH),--kernel $(KERNEL_PATH)) $(if $(MODULES),--modules $(MODULES))
# Another QEMU: a binary, a QEMU build tree, or a name in guest-images/qemus.yaml (debian-backports).
QEMU ?=
QEMU_ARGS := $(if $(QEMU),--qemu $(QEMU))

.PHONY: qemu docs test-full-image all setup host-packages libvirtd ssh-endpoint scenario suite matrix coverage nightly test unit image bench clean help kernel-from-source kernel-6.12-ksm-unpatched kernel-6.12-ksm-fixed

help:
	@echo "make scenario NAME=srao-anon-late-kill   run one scenario (sets everything up)"
	@echo "  ... KERNEL_PATH=~/linux [MODULES=DIR]    on a kernel you built (bzImage, vmlinux or build tree)"
	@echo "make test                                run the test suite, real guests included"
	@echo "make suite [KERNEL=debian-7.3]           run the whole catalog on each kernel (6.1, 6.12, 7.3, an RC); verdict table"
	@echo "make matrix [QEMUS='system debian-backports']  the catalog on every kernel x QEMU (restored guests); verdict table"
	@echo "make coverage [RUNS='results/A results/B']  memory_failure() outcomes reached per kernel; docs/verdicts.md table"
	@echo "make nightly [JOBS=2]                    the catalog as pytest items, guests in parallel, JUnit"
	@echo "make bench [ARGS='--part catalog']       scenario wall time against a bare baseline; debian-12-full beside it;"
	@echo "                                         the scenario on each QEMU; the catalog serially and with -j;"
	@echo "                                         a catalog subset on 1 vs 2 libvirt endpoints"
	@echo "make image [KERNEL=debian-6.12|debian-12-full] [KERNEL_PATH=...]  build (or reuse) a guest image, showing each step"
	@echo "make qemu QEMU=debian-backports        fetch the pinned second QEMU (10.0) beside the system's 7.2"
	@echo "  ... QEMU=NAME|PATH on scenario/suite    run on that QEMU (a name, a binary or a QEMU build tree)"
	@echo "make kernel-from-source                  build Debian's linux-source-6.1, small config, once (~6 min)"
	@echo "  ... KERNEL_SOURCE=linux-source-6.12 KERNEL_PATCHES='a.patch'  another source package, patched"
	@echo "make kernel-6.12-ksm-unpatched|kernel-6.12-ksm-fixed  6.12 without/with the ksmd fix; ksm-poisoned-page-rescan on it"
	@echo "make docs                                regenerate docs/scenario-reference.md, build the docs site into results/site"
	@echo "make libvirtd                            start virtlogd and libvirtd (no systemd needed)"
	@echo "make ssh-endpoint                        this host's libvirtd as a remote-style qemu+ssh URI (own sshd)"
	@echo "ARGS='--backend libvirt [--connect URI]' runs scenario/suite on libvirt (nightly: ARGS='--backend libvirt')"

setup: host-packages $(STAMP)

host-packages:
	@missing=""; for p in $(HOST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install:$$missing" >&2; exit 2; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

# make exits 2 whenever a recipe fails, whatever the code: the recipe names the
# tool's own code, and scripts and CI call the tool itself (docs/ci.md).
define exit_code_note
status=$$?; if [ $$status -ne 0 ]; then echo "make $@: $(1) exited with code $$status ($(2)); make itself exits 2 on any failure: for the code, run $(3) directly (docs/ci.md)" >&2; fi; exit $$status
endef

SCENARIO_CMD = $(ORCH) run $(NAME) $(if $(KERNEL),--image $(KERNEL)) $(KERNEL_ARGS) $(QEMU_ARGS) $(ARGS)
scenario: setup
	@test -n "$(NAME)" || { echo "usage: make scenario NAME=<scenario> (one of: $$(cd scenarios && ls *.yaml | sed 's/\.yaml$$//' | tr '\n' ' '))" >&2; exit 2; }
	@echo '$(subst ','\'',$(SCENARIO_CMD))'
	@$(SCENARIO_CMD); $(call exit_code_note,mce-orchestrator,1 FAIL; 2 ERROR,$(ORCH) run)

# Every catalog scenario on every kernel image (or KERNEL=debian-6.12 for one);
# the scenario x kernel table goes to results/verdict-table.md, and into
# docs/verdicts.md when all kernels ran. debian-7.3 is pinned (guest-images/images.yaml);
# debian-rc exists only while experimental has a kernel newer than the newest stable:
# otherwise its run says so and exits 5 (nothing to test), and the suite goes on without it.
KERNELS := debian-6.1 debian-6.12 debian-7.3 debian-rc
suite: setup
	@status=0; runs=""; \
	for kernel in $(if $(KERNEL),$(KERNEL),$(KERNELS)); do \
	  before=$$(readlink -f results/latest 2>/dev/null); rc=0; \
	  $(ORCH) run --image $$kernel $(QEMU_ARGS) $(ARGS) scenarios/*.yaml || rc=$$?; \
	  test $$rc = 0 || test $$rc = 5 || status=1; \
	  after=$$(readlink -f results/latest 2>/dev/null); \
	  if [ -n "$$after" ] && [ "$$after" != "$$before" ]; then runs="$$runs $$after"; \
	  elif [ $$rc = 5 ]; then echo "make suite: nothing to test on $$kernel today (said above)" >&2; \
	  else echo "make suite: no results for $$kernel" >&2; status=2; fi; \
	done; \
	test -n "$$runs" || exit 2; \
	$(PY) -m orchestrator.report.table $$runs $(if $(KERNEL),,--update docs/verdicts.md) > results/verdict-table.md || status=2; \
	cat results/verdict-table.md; exit $$status

# Every catalog scenario on every kernel x QEMU pair (restored guests): KERNELS x
# QEMUS, where `system` is qemu-system-x86_64 on PATH and any other word is a
# --qemu NAME|PATH (debian-backports: fetched on first use). The scenario x
# (kernel, QEMU) table goes to results/verdict-table.md and into docs/verdicts.md.
# A run that leaves no new results folder is not counted twice: the pair is missing.
QEMUS ?= system debian-backports
matrix: setup
	@status=0; runs=""; \
	for qemu in $(QEMUS); do \
	  for kernel in $(KERNELS); do \
	    before=$$(readlink -f results/latest 2>/dev/null); \
	    rc=0; $(ORCH) run --snapshot --image $$kernel $$(test $$qemu = system || echo --qemu $$qemu) $(ARGS) scenarios/*.yaml || rc=$$?; \
	    test $$rc = 0 || test $$rc = 5 || status=1; \
	    after=$$(readlink -f results/latest 2>/dev/null); \
	    if [ -n "$$after" ] && [ "$$after" != "$$before" ]; then runs="$$runs $$after"; \
	    elif [ $$rc = 5 ]; then echo "make matrix: nothing to test on $$kernel today (said above)" >&2; \
	    else echo "make matrix: no results for $$kernel on QEMU $$qemu" >&2; status=2; fi; \
	  done; \
	done; \
	test -n "$$runs" || exit 2; \
	$(PY) -m orchestrator.report.table $$runs --update docs/verdicts.md > results/verdict-table.md || status=2; \
	cat results/verdict-table.md; echo "make matrix: table from runs$$runs"; exit $$status

# Which of memory_failure()'s outcomes (the page types each kernel's vmlinux
# names, and the paths that print none) the catalog reaches on each kernel:
# runs the catalog on both kernels (restored guests), or reads the given
# RUNS, prints the share per kernel and rewrites the coverage table in docs/verdicts.md.
RUNS ?=
coverage: setup
	@runs="$(RUNS)"; status=0; \
	if [ -z "$$runs" ]; then \
	  for kernel in $(KERNELS); do \
	    before=$$(readlink -f results/latest 2>/dev/null); rc=0; \
	    $(ORCH) run --snapshot --image $$kernel $(ARGS) scenarios/*.yaml || rc=$$?; \
	    test $$rc = 0 || test $$rc = 5 || status=1; \
	    after=$$(readlink -f results/latest 2>/dev/null); \
	    test -z "$$after" || test "$$after" = "$$before" || runs="$$runs $$after"; \
	  done; \
	fi; \
	$(PY) -m orchestrator.report.coverage $$runs --update docs/verdicts.md > results/coverage-table.md || status=2; \
	cat results/coverage-table.md; exit $$status

# The nightly shape: every scenario x kernel as a pytest item, JOBS guests at
# once (pytest-xdist), restored from saved guests, JUnit XML in
# results/nightly-junit.xml; QEMU=NAME|PATH runs them all on that QEMU.
JOBS ?= 2
NIGHTLY_CMD = $(PY) -m pytest -p no:cacheprovider -n $(JOBS) --snapshot --junitxml=results/nightly-junit.xml $(if $(KERNEL),--kernels $(KERNEL)) $(QEMU_ARGS) $(ARGS) scenarios
nightly: setup
	@echo '$(subst ','\'',$(NIGHTLY_CMD))'
	@$(NIGHTLY_CMD); $(call exit_code_note,pytest,1 a scenario failed or errored; 2 interrupted; 5 none collected,$(PY) -m pytest ... scenarios)

# KERNEL names any image: the initramfs ones (images.yaml) or a full
# distribution image (distro-images.yaml, e.g. debian-12-full: minutes, shown as it goes).
# The pinned second QEMU (guest-images/qemus.yaml), unpacked beside the system's, never over it.
qemu: setup
	@test -n "$(QEMU)" || { echo "usage: make qemu QEMU=<name> (one of: $$(grep -E '^[a-z0-9][^:]*:' guest-images/qemus.yaml | cut -d: -f1 | tr '\n' ' '))" >&2; exit 2; }
	$(PY) -m orchestrator.guest.qemu.install $(QEMU)

image: setup
	$(if $(strip $(KERNEL_ARGS)),$(PY) -m orchestrator.guest.images $(if $(KERNEL),$(KERNEL),debian-6.1) $(KERNEL_ARGS),$(PY) -m orchestrator.guest.images.distro $(if $(KERNEL),$(KERNEL),debian-6.1))

# TEST_JOBS guests at once (pytest-xdist; --dist loadfile keeps the tests of
# one file on one worker, so a module fixture's orchestrator run happens
# once). results/progress.log gets a line per test, scenario and phase from
# every process and is shown as it grows, so a hung job names where it hangs.
# pytest's exit code 5 (no tests ran) is a failure.
TEST_JOBS ?= 2
test: setup
	@mkdir -p results && : > results/progress.log
	@tail -s 0.3 -n +1 -F --pid=$$$$ results/progress.log 2>/dev/null | sed -u 's/^/progress: /' & \
	MCE_PROGRESS_LOG=$(CURDIR)/results/progress.log $(PY) -m pytest -v -ra -p no:cacheprovider \
	  -n $(TEST_JOBS) --dist loadfile --junitxml=results/pytest-junit.xml $(ARGS) tests; \
	status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests: that is a failure" >&2; status=1; fi; \
	exit $$status

# The full-distribution image's tests: the catalog on it (restored guests; also in
# make test) and a user's disk image (cold boots with cloud-init: minutes under TCG).
test-full-image: setup
	MCE_TEST_FULL_IMAGE=1 $(PY) -m pytest -v -ra -p no:cacheprovider $(ARGS) tests/integration/test_full_image.py \
	  tests/integration/test_disk_image.py

unit: setup
	$(PY) -m pytest -ra $(ARGS) tests/unit

# virtlogd and libvirtd without systemd, /dev/kvm as udev would set it; idempotent.
libvirtd: setup
	$(PY) -m orchestrator.guest.libvirt.daemons

# A private sshd on 127.0.0.1 (own config, keys, pinned host key) in front of this
# host's libvirtd: prints its qemu+ssh URI for --connect or a --hosts file.
ssh-endpoint: libvirtd
	$(PY) -m orchestrator.guest.libvirt.sshd $(CURDIR)/results/ssh-endpoint

bench: libvirtd
	$(PY) -m orchestrator.bench $(ARGS)

# Debian's linux-source-6.1 with guest-images/kernel-small.config (all built in), built
# once into guest-images/.cache/kernel-src/linux-source-6.1 and reused while the fragment
# and the source package stay the same; then the base scenarios run on it with --kernel.
# KERNEL_SOURCE=linux-source-6.12[=VERSION] KERNEL_PATCHES='a.patch ...' builds another
# source package, patched, into .cache/kernel-src/PACKAGE[+PATCHNAME...] (build-kernel.sh).
KERNEL_BUILD_PACKAGES := flex bison bc libelf-dev libssl-dev patch
KERNEL_SOURCE  ?= linux-source-6.1
KERNEL_PATCHES ?=
KERNEL_SCENARIOS ?= srao-anon-late-kill srar-anon-access free-page
SMALL_KERNEL = guest-images/.cache/kernel-src/$(firstword $(subst =, ,$(KERNEL_SOURCE)))$(subst $(eval) ,,$(foreach p,$(KERNEL_PATCHES),+$(basename $(notdir $(p)))))
kernel-from-source: setup
	@missing=""; for p in $(KERNEL_BUILD_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	nice -n 19 sh guest-images/build-kernel.sh guest-images/kernel-small.config guest-images/.cache '$(KERNEL_SOURCE)' $(KERNEL_PATCHES)
	$(ORCH) run --kernel $(SMALL_KERNEL) $(ARGS) $(KERNEL_SCENARIOS)

# The ksmd oops (docs/guest-kernel-bugs.md): Debian 12's linux-source-6.12 at the version
# the debian-6.12 image runs, built unpatched and with the fix, each running
# ksm-poisoned-page-rescan (KNOWN-FAIL unpatched, XPASS patched). ARGS='--repeat 5' etc.
KSM_SOURCE  := linux-source-6.12=6.12.118-1~deb12u1
KSM_PATCH   := guest-images/patches/linux-source-6.12/ksm-skip-hwpoisoned-stable-folio.patch
kernel-6.12-ksm-unpatched:
	$(MAKE) --no-print-directory kernel-from-source KERNEL_SOURCE='$(KSM_SOURCE)' KERNEL_PATCHES= KERNEL_SCENARIOS=ksm-poisoned-page-rescan
kernel-6.12-ksm-fixed:
	$(MAKE) --no-print-directory kernel-from-source KERNEL_SOURCE='$(KSM_SOURCE)' KERNEL_PATCHES='$(KSM_PATCH)' KERNEL_SCENARIOS=ksm-poisoned-page-rescan

# The scenario reference from the JSON Schema (committed; the unit tests check it is
# current), then the site, built as the unit tests build it: every warning (a
# broken link or anchor, a page left out of the nav) fails.
docs: setup
	$(PY) docs/gen_reference.py
	$(VENV)/bin/mkdocs build --strict --site-dir $(CURDIR)/results/site

clean:
	rm -rf results .pytest_cache
