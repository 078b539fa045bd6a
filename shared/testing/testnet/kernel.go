package testnet

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// InVM reports whether the tests run inside scripts/vmtest's VM, which
// sets CNIBOX_IN_VM=1.
func InVM() bool { return os.Getenv("CNIBOX_IN_VM") == "1" }

// KernelFeatures are the features RequireKernel knows: link kinds it can
// make in a throwaway namespace.
var KernelFeatures = []string{"veth", "dummy", "bridge", "bridge-vlan", "ifb", "vrf", "vxlan", "macvlan", "ipvlan", "vlan", "vlan-802.1ad", "ipip"}

var errUnknownFeature = errors.New("testnet: unknown kernel feature")

// RequireKernel skips the test when the kernel lacks one of features (see
// KernelFeatures), with a message naming what is missing. Such a test runs in the VM instead (make vmtest), where a
// missing feature fails the test: no feature goes untested.
//
// Call it first thing in the top-level test function: in the VM only the
// tests that called it create namespaces; the others ran on the host and
// are skipped.
func RequireKernel(t testing.TB, features ...string) {
	t.Helper()
	RequireRoot(t)
	if InVM() {
		vmTests.Store(topLevel(t), true)
	}
	for _, f := range features {
		err := probe(f)
		switch {
		case err == nil:
		case errors.Is(err, errUnknownFeature):
			t.Fatal(err)
		case InVM():
			t.Fatalf("the VM kernel lacks %s: %v (add its module to scripts/vmtest)", f, err)
		default:
			t.Skipf("kernel lacks %s (%v): runs in the VM instead (make vmtest)", f, err)
		}
	}
}

// vmTests holds the top-level tests that asked for kernel features; in the
// VM every other test is skipped when it makes its first namespace.
var vmTests sync.Map

func topLevel(t testing.TB) string {
	name, _, _ := strings.Cut(t.Name(), "/")
	return name
}

// skipHostTestInVM skips, inside the VM, a test that did not call
// RequireKernel: it needs nothing the host lacks and ran there already.
func skipHostTestInVM(t testing.TB) {
	t.Helper()
	if !InVM() {
		return
	}
	if _, ok := vmTests.Load(topLevel(t)); !ok {
		t.Skip("CNIBOX_IN_VM: needs no kernel feature the host lacks; ran on the host")
	}
}

var (
	probeMu    sync.Mutex
	probeCache = map[string]error{}
)

// probe reports whether the kernel can make a link of the given kind, by
// making one in a throwaway network namespace. Results are cached.
func probe(feature string) error {
	probeMu.Lock()
	defer probeMu.Unlock()
	if err, ok := probeCache[feature]; ok {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		// The thread enters a new netns and is never unlocked, so the Go
		// runtime throws it away when the goroutine ends, netns and all.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		errc <- makeLink(feature)
	}()
	err := <-errc
	probeCache[feature] = err
	return err
}

func makeLink(feature string) error {
	attrs := func(name string) netlink.LinkAttrs {
		a := netlink.NewLinkAttrs()
		a.Name = name
		return a
	}
	parent := func() (netlink.Link, error) {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs("probe0"), PeerName: "probe1"}); err != nil {
			return nil, fmt.Errorf("make a veth parent: %w", err)
		}
		return netlink.LinkByName("probe0")
	}
	var link netlink.Link
	switch feature {
	case "veth":
		link = &netlink.Veth{LinkAttrs: attrs("probe"), PeerName: "probe-peer"}
	case "dummy":
		link = &netlink.Dummy{LinkAttrs: attrs("probe")}
	case "bridge":
		link = &netlink.Bridge{LinkAttrs: attrs("probe")}
	case "bridge-vlan": // a bridge with VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)
		on := true
		link = &netlink.Bridge{LinkAttrs: attrs("probe"), VlanFiltering: &on}
	case "ifb":
		link = &netlink.Ifb{LinkAttrs: attrs("probe")}
	case "vrf":
		link = &netlink.Vrf{LinkAttrs: attrs("probe"), Table: 100}
	case "vxlan":
		link = &netlink.Vxlan{LinkAttrs: attrs("probe"), VxlanId: 1, Port: 4789}
	case "ipip":
		// Endpoints of its own: one without is the module's tunl0.
		link = &netlink.Iptun{LinkAttrs: attrs("probe"), Local: net.IPv4(192, 0, 2, 1), Remote: net.IPv4(192, 0, 2, 2)}
	case "macvlan", "ipvlan", "vlan", "vlan-802.1ad":
		p, err := parent()
		if err != nil {
			return err
		}
		a := attrs("probe")
		a.ParentIndex = p.Attrs().Index
		switch feature {
		case "macvlan":
			link = &netlink.Macvlan{LinkAttrs: a, Mode: netlink.MACVLAN_MODE_BRIDGE}
		case "ipvlan":
			link = &netlink.IPVlan{LinkAttrs: a, Mode: netlink.IPVLAN_MODE_L2}
		case "vlan":
			link = &netlink.Vlan{LinkAttrs: a, VlanId: 10}
		default:
			link = &netlink.Vlan{LinkAttrs: a, VlanId: 10, VlanProtocol: netlink.VLAN_PROTOCOL_8021AD}
		}
	default:
		return fmt.Errorf("%w %q (known: %s)", errUnknownFeature, feature, strings.Join(KernelFeatures, ", "))
	}
	if err := netlink.LinkAdd(link); err != nil {
		return fmt.Errorf("create a link of kind %s: %w", feature, err)
	}
	return nil
}
