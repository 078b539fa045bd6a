SHELL := /bin/bash
# cnibox: every standard CNI plugin in one static binary.
#   make build    bin/cnibox (static, stripped, version stamped from git)
#   make test     install test dependencies, vet, unit + integration tests (-race, as root),
#                 then the tests that need kernel features the host lacks, in a VM (make vmtest)
#   make vmtest   only the VM part: scripts/vmtest (Debian's kernel under qemu TCG)
#   make demo     install into a temp dir and run the default network on a throwaway pod
#   make install  cnibox install --dir $(DESTDIR)$(CNI_BIN_DIR)
#   make bench    side-by-side benchmark against the reference plugins
#   make fuzz     every fuzz target for FUZZTIME each (make test runs 3000 inputs of each)
#   make soak     the default chain's soak at size SOAK (cycles per worker per round; make test runs 4)

GO          ?= go
CNI_BIN_DIR ?= /opt/cni/bin
VERSION     := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT      := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
LDFLAGS     := -s -w -buildid= \
               -X github.com/cnibox/cnibox/shared/cni.BuildVersion=$(VERSION) \
               -X github.com/cnibox/cnibox/shared/cni.BuildCommit=$(COMMIT)
GOTEST_FLAGS ?=
TEST_TIMEOUT ?= 60m

# Debian packages the tests use. make test installs the missing ones.
TEST_DEBS := iptables nftables iproute2 iputils-ping util-linux containernetworking-plugins \
             qemu-system-x86 busybox-static dnsmasq-base
# The runtimes the end-to-end tests drive (shared/testing/runtimetest).
TEST_DEBS += containerd runc podman conmon busybox-static
# The firewall applet's firewalld test runs Debian's firewalld in its node
# netns on a private system bus (a dbus-daemon of its own); the package's
# service is never started on the machine (no init/policy-rc.d here).
TEST_DEBS += firewalld dbus-daemon

export CGO_ENABLED := 0

.PHONY: build install test test-deps vet vmtest demo clean bench soak fuzz

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/cnibox .

install: build
	bin/cnibox install --dir $(DESTDIR)$(CNI_BIN_DIR)

# install-missing installs the Debian packages of $(1) that are not installed.
define install-missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

# What make demo runs besides cnibox: ip, iptables, ping, iperf3 (the shaping part).
DEMO_DEBS := iproute2 iptables nftables iputils-ping iperf3 util-linux

test-deps:
	$(call install-missing,$(TEST_DEBS))
	@command -v cnitool >/dev/null 2>&1 || [ -x "$$($(GO) env GOPATH)/bin/cnitool" ] || \
	  $(GO) install github.com/containernetworking/cni/cnitool@v1.3.0

vet:
	$(GO) vet ./...

test: test-deps vet build
	@[ "$$(id -u)" = 0 ] || { echo "make test needs root: the integration tests create network namespaces"; exit 1; }
	@rc=0; \
	CGO_ENABLED=1 CNIBOX_BINARY=$(CURDIR)/bin/cnibox PATH="$$PATH:$$($(GO) env GOPATH)/bin" \
	  $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(GOTEST_FLAGS) ./... || rc=1; \
	$(MAKE) --no-print-directory fuzz FUZZTIME=3000x || rc=1; \
	CNIBOX_BINARY=$(CURDIR)/bin/cnibox PATH="$$PATH:$$($(GO) env GOPATH)/bin" GO=$(GO) scripts/vmtest || rc=1; \
	exit $$rc

# The tests that need kernel features this machine lacks, in a VM.
vmtest: build
	CNIBOX_BINARY=$(CURDIR)/bin/cnibox PATH="$$PATH:$$($(GO) env GOPATH)/bin" GO=$(GO) scripts/vmtest

demo: build
	$(call install-missing,$(DEMO_DEBS))
	bash scripts/demo
	bash scripts/demo-shaping

clean:
	rm -rf bin

# Side-by-side benchmark against the reference plugins (REF_CNI_PATH, default
# /usr/lib/cni from Debian's containernetworking-plugins). BENCH_FLAGS="-n 50 -run bridge".
BENCH_FLAGS ?=
bench: build test-deps
	$(GO) run ./scripts/bench -bin bin/cnibox $(BENCH_FLAGS)

# The soak of the default chain (shared/testing/reliability TestSoak): 4 workers x 3
# rounds x SOAK transient pods, lost DELs and GCs, leak-checked every round.
SOAK ?= 100
soak: build test-deps
	@[ "$$(id -u)" = 0 ] || { echo "make soak needs root"; exit 1; }
	CGO_ENABLED=1 CNIBOX_BINARY=$(CURDIR)/bin/cnibox CNIBOX_SOAK=$(SOAK) \
	  $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -v -run 'TestSoak$$' ./shared/testing/reliability

# Fuzz targets (package:Target); their seed corpora are in the packages'
# testdata/fuzz and run as plain tests in make test too. make test fuzzes a
# fixed number of inputs ("3000x"): a short -fuzztime in seconds can end a
# run with a spurious "context deadline exceeded".
FUZZTIME ?= 30s
FUZZ_TARGETS := shared/cni:FuzzRun shared/cni:FuzzPrevResult shared/cni:FuzzLoadArgs shared/cni:FuzzValidAttachments \
                applets/hostlocal:FuzzConfig applets/hostlocal:FuzzIterator applets/tuning:FuzzSysctlPath \
                applets/tuning:FuzzLoad applets/portmap:FuzzLoad applets/bridge:FuzzLoad applets/bandwidth:FuzzLoad \
                applets/firewall:FuzzLoad applets/static:FuzzLoad applets/macvlan:FuzzLoad applets/ptp:FuzzLoad \
                applets/hostdevice:FuzzLoad applets/vlan:FuzzLoad applets/ipvlan:FuzzLoad \
                applets/dhcp:FuzzResultFromACK applets/dhcp:FuzzLeaseTimes applets/dhcp:FuzzConfig applets/dhcp:FuzzServeRPC \
                applets/tuning:FuzzAllowlist applets/portmap:FuzzRules applets/firewall:FuzzRules shared/ipmasq:FuzzRules
fuzz:
	@rc=0; for t in $(FUZZ_TARGETS); do \
	  echo "fuzz $$t ($(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZTIME) ./$${t%%:*} >/tmp/cnibox-fuzz.$$$$ 2>&1 || { cat /tmp/cnibox-fuzz.$$$$; rc=1; }; \
	  rm -f /tmp/cnibox-fuzz.$$$$; \
	done; exit $$rc
