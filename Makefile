# swift-cni: build, test and install the CNI plugins.
# Everything runs as root on a fresh Debian 12 with the Swift toolchain; `make test` installs
# what it needs first (make deps).

SHELL := /bin/bash
PLUGINS := bridge ptp host-local static loopback portmap firewall tuning bandwidth cluster-ipam
DESTDIR ?=
CNI_BIN_DIR ?= /opt/cni/bin
SWIFT ?= swift
PYTHON ?= /usr/bin/python3
# Debian packages: libnl for the build; iproute2, nftables, iptables for the plugins; the
# reference plugins and pytest for the integration tests and benchmarks; etcd-server (3.4) for the
# cluster-ipam tests and libcurl for cnictl's etcd client; dbus-daemon and python3-dbus/gi for the
# fake firewalld the firewalld backend is tested against; openssl makes the etcd TLS test certificates.
DEB_PACKAGES := pkg-config libnl-3-dev iproute2 nftables iptables containernetworking-plugins \
	python3 python3-pytest python3-dbus python3-gi dbus-daemon procps util-linux \
	podman runc conmon containerd golang-go golang-github-appc-cni-dev busybox-static python3-yaml curl iputils-ping \
	gcc libc6-dev time etcd-server libcurl4-openssl-dev openssl
# Release binaries are fully static executables (Swift runtime, libnl, libstdc++ and glibc
# linked in): no dynamic loader work at each start (a third of a plugin's start-up CPU when
# linked dynamically), and they run on a node without libnl, like the reference's Go binaries.
# The linker warns that getpwuid/dlopen in the Swift runtime would need the build's glibc at run
# time; the plugins never reach those paths (no home directories, no dlopen).
# cnictl is the exception: it links the system's libcurl (for etcd, cluster-ipam), whose static
# form would need static Kerberos, LDAP and more that Debian does not ship; it stays dynamically
# linked against glibc and libcurl (with the Swift runtime still static). Package.swift passes
# -static-executable to the cni-plugins link only.
RELEASE_FLAGS := -c release --static-swift-stdlib -Xlinker -s
# The plugins are one multi-call executable (cni-plugins, which runs as the name it is started
# under): bin/ holds it as hard links under the five names, `make install` as five copies.
# cnictl, the operator's tool, is its own executable (it links swift-argument-parser, which the
# plugins must not): bin/cnictl, and `make install` puts it beside the plugins in CNI_BIN_DIR
# (as the reference ships its dhcp daemon there) with a link in SBIN_DIR.
SBIN_DIR ?= /usr/local/sbin
# Seconds per libFuzzer target for `make fuzz`.
FUZZ_SECONDS ?= 60

.PHONY: all build deps test unit-test integration-test lint format install clean demo cluster-demo bench fuzz stress symbol-order

all: build

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

build:
	$(SWIFT) build $(RELEASE_FLAGS) 2>&1 | grep -v -e 'in statically linked applications requires at runtime' \
		-e "the use of \`mktemp' is dangerous"; test $${PIPESTATUS[0]} -eq 0
	@mkdir -p bin
	@bindir=$$($(SWIFT) build $(RELEASE_FLAGS) --show-bin-path); \
	rm -f $(addprefix bin/,$(PLUGINS)); install -m 0755 "$$bindir/cni-plugins" bin/bridge; \
	for p in $(filter-out bridge,$(PLUGINS)); do ln bin/bridge bin/$$p; done; \
	rm -f bin/cnictl; install -m 0755 "$$bindir/cnictl" bin/cnictl; ls -li bin

demo: deps build
	bash scripts/demo.sh

# Three namespace "nodes" sharing one cluster-ipam pool through a private etcd; A pings C.
cluster-demo: deps build
	bash scripts/cluster-demo.sh

test: deps lint build unit-test integration-test

unit-test:
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

integration-test:
	$(PYTHON) -m pytest -q -p no:cacheprovider integration

lint:
	$(SWIFT) format lint --strict --recursive Package.swift Sources Tests

format:
	$(SWIFT) format --in-place --recursive Package.swift Sources Tests

# Ours (bin/) against the reference (/usr/lib/cni), side by side; QUICK=1 for a smoke run of a
# few minutes. bench/README.md explains the table.
bench: deps build
	$(PYTHON) bench/run.py $(if $(QUICK),--quick)
	$(PYTHON) bench/cluster.py $(if $(QUICK),--quick)

install: build
	install -d $(DESTDIR)$(CNI_BIN_DIR)
	for p in $(PLUGINS); do [ -x bin/$$p ] && install -m 0755 bin/$$p $(DESTDIR)$(CNI_BIN_DIR)/$$p; done
	install -m 0755 bin/cnictl $(DESTDIR)$(CNI_BIN_DIR)/cnictl
	install -d $(DESTDIR)$(SBIN_DIR)
	ln -sfn $(CNI_BIN_DIR)/cnictl $(DESTDIR)$(SBIN_DIR)/cnictl

clean:
	rm -rf .build bin

# libFuzzer targets (Fuzz/, a separate package), each for FUZZ_SECONDS; crashes fail the target.
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# The long fault-injection and concurrency runs (make test runs them bounded to about a minute).
stress: build
	PYTHON=$(PYTHON) scripts/stress.sh

# Rewrites Sources/cni-plugins/symbol-order.txt, the release link order of cni-plugins (start-up
# and ADD code first: peak RSS, cold start; see bench/PROFILE.md) from callgrind runs of an
# unstripped release build; by hand after changes that move much code, then `make build` and
# commit the file. Needs valgrind and gdb (installed here if missing; not part of make deps).
symbol-order: deps
	@for p in valgrind gdb; do command -v $$p >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$p >/dev/null; done
	$(PYTHON) scripts/symbol-order.py
