SHELL := /bin/bash
# cnibox: every standard CNI plugin in one static binary.
#   make build    bin/cnibox (static, stripped, version stamped from git)
#   make test     install test dependencies, vet, unit + integration tests (-race, as root),
#                 then the tests that need kernel features the host lacks, in a VM (make vmtest)
#   make vmtest   only the VM part: scripts/vmtest (Debian's kernel under qemu TCG)
#   make demo     install into a temp dir and run the default network on a throwaway pod
#   make install  cnibox install --dir $(DESTDIR)$(CNI_BIN_DIR) with an existing bin/cnibox (no Go needed)
#   make release  bin/release: tarballs for every architecture, the node-installer image, checksums
#   make dist     bin/cnibox-vX.Y.Z-src.tar.gz, a source tarball
#   make bench    side-by-side benchmark against the reference plugins
#   make fuzz     every fuzz target for FUZZTIME each (make test runs 3000 inputs of each)
#   make soak     the default chain's soak at size SOAK (cycles per worker per round; make test runs 4)
#   make conformance  the field corpus on the reference v1.9.1 and on cnibox, compared (make test runs it)
#   make ref-plugins  build the reference plugins v1.9.1 into REF_CACHE (only the missing ones)
#   make flanneld     build flanneld FLANNEL_VERSION into FLANNEL_CACHE (the cluster lab's; once)
#   make cluster-demo three nodes with etcd, flanneld and cnibox: vxlan and host-gw, state and speed

GO          ?= go
CNI_BIN_DIR ?= /opt/cni/bin
# The version is the VERSION file (semver; built into the binary, see
# main.go); the commit comes from git, "-dirty" with uncommitted changes, or
# in a source tarball (git archive, make dist) from the COMMIT file git
# archive fills in.
VERSION     := $(shell cat VERSION)
COMMIT      := $(shell if [ "$$(git rev-parse --show-toplevel 2>/dev/null)" = "$(CURDIR)" ]; then \
                 c=$$(git rev-parse --short=12 HEAD); git diff --quiet HEAD -- 2>/dev/null || c=$$c-dirty; echo $$c; \
               else c=$$(grep -v Format COMMIT 2>/dev/null | cut -c1-12); echo $${c:-unknown}; fi)
LDFLAGS     := -s -w -buildid= -X github.com/cnibox/cnibox/shared/cni.BuildCommit=$(COMMIT)
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
# The cluster lab (shared/testing/cluster): etcd as flanneld's subnet
# manager, run as a plain process in a netns of its own; iperf3 measures.
TEST_DEBS += etcd-server etcd-client iperf3

export CGO_ENABLED := 0

.PHONY: build install dist release test test-deps vet vmtest demo clean bench soak fuzz conformance ref-plugins flanneld cluster-demo

# flanneld for the cluster lab, built from source once into FLANNEL_CACHE
# (never committed). Its udp backend needs cgo, so this build uses it.
FLANNEL_VERSION := v0.26.7
FLANNEL_CACHE   ?= $${XDG_CACHE_HOME:-$$HOME/.cache}/cnibox/flannel-$(FLANNEL_VERSION)

# The reference the conformance runner compares with: upstream's plugins at
# REF_VERSION, built from source into REF_CACHE (never committed). Debian's
# 1.1.1 in /usr/lib/cni stands in only for a plugin this list lacks.
REF_VERSION := v1.9.1
REF_CACHE   ?= $${XDG_CACHE_HOME:-$$HOME/.cache}/cnibox/ref-$(REF_VERSION)
REF_PLUGINS := main/bridge main/ptp main/macvlan main/ipvlan main/vlan main/host-device main/loopback \
               main/dummy main/tap ipam/host-local ipam/static ipam/dhcp meta/tuning meta/portmap \
               meta/bandwidth meta/firewall meta/sbr meta/vrf
# Cases the conformance runner plays at once (they wait on processes, not CPU).
CONFORMANCE_JOBS ?= 8
CONFORMANCE_FLAGS ?=
# The cnibox under test (make -o build conformance CONFORMANCE_BINARY=... tests another build).
CONFORMANCE_BINARY ?= $(CURDIR)/bin/cnibox

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/cnibox .

# install uses an existing bin/cnibox (built by make build, or unpacked from
# a release), so that "sudo make install" needs no Go; it builds only when
# there is none. With DESTDIR (a package's staging root) the entries name
# the binary by its final path, CNI_BIN_DIR.
install:
	@[ -x bin/cnibox ] || $(MAKE) --no-print-directory build
	bin/cnibox install --dir $(DESTDIR)$(CNI_BIN_DIR) --host-dir $(CNI_BIN_DIR)

# The release artefacts (scripts/release): cnibox-linux-ARCH-vX.Y.Z.tgz for
# every architecture, the node-installer image (an OCI archive), SHA256SUMS
# and SHA512SUMS, reproducible byte for byte. RELEASE_FLAGS="-arch amd64".
RELEASE_DIR   ?= bin/release
RELEASE_FLAGS ?=
release:
	$(GO) run ./scripts/release -out $(RELEASE_DIR) $(RELEASE_FLAGS)

# A source tarball (no .git) that builds with the right version and commit.
dist:
	@mkdir -p bin
	git archive --format=tar.gz --prefix=cnibox-$(VERSION)/ -o bin/cnibox-v$(VERSION)-src.tar.gz HEAD
	@echo bin/cnibox-v$(VERSION)-src.tar.gz

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

test-deps:
	$(call install-missing,$(TEST_DEBS))
	@command -v cnitool >/dev/null 2>&1 || [ -x "$$($(GO) env GOPATH)/bin/cnitool" ] || \
	  $(GO) install github.com/containernetworking/cni/cnitool@v1.3.0

vet:
	$(GO) vet ./...

# The conformance package runs once, through make conformance (its own
# parallelism and report), not a second time in go test ./... .
test: test-deps vet build ref-plugins flanneld
	@[ "$$(id -u)" = 0 ] || { echo "make test needs root: the integration tests create network namespaces"; exit 1; }
	@rc=0; \
	CGO_ENABLED=1 CNIBOX_BINARY=$(CURDIR)/bin/cnibox CNIBOX_FLANNELD="$(FLANNEL_CACHE)/flanneld" PATH="$$PATH:$$($(GO) env GOPATH)/bin" \
	  $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(GOTEST_FLAGS) $$($(GO) list ./... | grep -v '/shared/testing/conformance$$') || rc=1; \
	$(MAKE) --no-print-directory conformance || rc=1; \
	$(MAKE) --no-print-directory fuzz FUZZTIME=3000x || rc=1; \
	CNIBOX_BINARY=$(CURDIR)/bin/cnibox CNIBOX_FLANNELD="$(FLANNEL_CACHE)/flanneld" PATH="$$PATH:$$($(GO) env GOPATH)/bin" GO=$(GO) \
	  VMTEST_CONFORMANCE_REF="$(REF_CACHE)" scripts/vmtest || rc=1; \
	exit $$rc

# The tests that need kernel features this machine lacks, in a VM.
vmtest: build ref-plugins flanneld
	CNIBOX_BINARY=$(CURDIR)/bin/cnibox CNIBOX_FLANNELD="$(FLANNEL_CACHE)/flanneld" PATH="$$PATH:$$($(GO) env GOPATH)/bin" GO=$(GO) \
	  VMTEST_CONFORMANCE_REF="$(REF_CACHE)" scripts/vmtest

ref-plugins:
	@dir="$(REF_CACHE)"; for p in $(REF_PLUGINS); do \
	  [ -x "$$dir/$${p#*/}" ] && continue; \
	  echo "building the reference $${p#*/} $(REF_VERSION) into $$dir"; \
	  CGO_ENABLED=0 GOBIN="$$dir" $(GO) install github.com/containernetworking/plugins/plugins/$$p@$(REF_VERSION) || exit 1; \
	done

flanneld:
	@dir="$(FLANNEL_CACHE)"; [ -x "$$dir/flanneld" ] && exit 0; \
	echo "building flanneld $(FLANNEL_VERSION) into $$dir (a few minutes, once)"; \
	CGO_ENABLED=1 GOBIN="$$dir" $(GO) install -ldflags '-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$(FLANNEL_VERSION)' \
	  github.com/flannel-io/flannel@$(FLANNEL_VERSION) && mv "$$dir/flannel" "$$dir/flanneld"

# The cluster lab shown to a person: scripts/cluster-demo.
cluster-demo: build flanneld
	$(call install-missing,etcd-server etcd-client iperf3 iproute2 iptables iputils-ping)
	CNIBOX_BINARY=$(CURDIR)/bin/cnibox CNIBOX_FLANNELD="$(FLANNEL_CACHE)/flanneld" GO=$(GO) bash scripts/cluster-demo

# The differential runner (shared/testing/conformance) over testdata/field:
# one line per divergence, then "N cases, M identical, K intentional, U
# unexplained". CONFORMANCE_FLAGS="-test.run TestConformance/containerd/".
conformance: build ref-plugins
	@[ "$$(id -u)" = 0 ] || { echo "make conformance needs root: it creates network namespaces"; exit 1; }
	@bin=$$(mktemp -d)/conformance.test; \
	$(GO) test -c -o $$bin ./shared/testing/conformance || exit 1; \
	cd shared/testing/conformance && CNIBOX_BINARY=$(CONFORMANCE_BINARY) REF_CNI_PATH="$(REF_CACHE)" \
	  $$bin -test.count=1 -test.parallel $(CONFORMANCE_JOBS) -test.timeout 30m $(CONFORMANCE_FLAGS); \
	rc=$$?; rm -rf "$$(dirname $$bin)"; exit $$rc

# The demo installs nothing: it says which tools are missing (ip, iptables,
# ping, unshare; iperf3 is optional) and leaves nothing in /run or /var/lib.
demo: build
	bash scripts/demo
	bash scripts/demo-shaping

clean:
	rm -rf bin

# Side-by-side benchmark against the reference plugins (REF_CNI_PATH, default
# the v1.9.1 build in REF_CACHE) and the floor. BENCH_FLAGS="-n 50 -run bridge".
BENCH_FLAGS ?=
bench: build test-deps ref-plugins
	REF_CNI_PATH="$${REF_CNI_PATH:-$(REF_CACHE)}" $(GO) run ./scripts/bench -bin bin/cnibox $(BENCH_FLAGS)

# The soak of the default chain (shared/testing/reliability TestSoak): 4 workers x 3
# rounds x SOAK transient pods, lost DELs and GCs, leak-checked every round.
SOAK ?= 100
# ADD/DEL cycles of the dhcp daemon's soak (applets/dhcp TestDaemonSoak; make test runs 40).
DHCP_SOAK ?= 2000
soak: build test-deps
	@[ "$$(id -u)" = 0 ] || { echo "make soak needs root"; exit 1; }
	CGO_ENABLED=1 CNIBOX_BINARY=$(CURDIR)/bin/cnibox CNIBOX_SOAK=$(SOAK) \
	  $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -v -run 'TestSoak$$' ./shared/testing/reliability
	CGO_ENABLED=1 CNIBOX_BINARY=$(CURDIR)/bin/cnibox CNIBOX_DHCP_SOAK=$(DHCP_SOAK) \
	  $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v -run 'TestDaemonSoak$$' ./applets/dhcp

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
                applets/flannel:FuzzConfig applets/dhcp:FuzzResultFromACK applets/dhcp:FuzzLeaseTimes applets/dhcp:FuzzConfig applets/dhcp:FuzzServeRPC \
                applets/tuning:FuzzAllowlist applets/portmap:FuzzRules applets/firewall:FuzzRules shared/ipmasq:FuzzRules
fuzz:
	@rc=0; for t in $(FUZZ_TARGETS); do \
	  echo "fuzz $$t ($(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZTIME) ./$${t%%:*} >/tmp/cnibox-fuzz.$$$$ 2>&1 || { cat /tmp/cnibox-fuzz.$$$$; rc=1; }; \
	  rm -f /tmp/cnibox-fuzz.$$$$; \
	done; exit $$rc
