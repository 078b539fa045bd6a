package iface_test

import (
	"encoding/json"
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/iface"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// linkCount counts the links of a netns (ip's output may carry warnings
// on stderr, such as about a peer netns it cannot name, so parse JSON).
func linkCount(t *testing.T, n *testnet.NS) int {
	t.Helper()
	out, err := n.Command("ip", "-j", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var links []struct{ Ifname string }
	if err := json.Unmarshal(out, &links); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return len(links)
}

func TestMergeDNS(t *testing.T) {
	conf := types.DNS{Nameservers: []string{"10.0.0.1"}, Search: []string{"a"}}
	fromIPAM := types.DNS{Nameservers: []string{"10.0.0.2", "10.0.0.1"}, Domain: "ipam", Search: []string{"b"}, Options: []string{"ndots:2"}}
	got := iface.MergeDNS(conf, fromIPAM)
	want := types.DNS{Nameservers: []string{"10.0.0.1", "10.0.0.2"}, Domain: "ipam", Search: []string{"a", "b"}, Options: []string{"ndots:2"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("MergeDNS = %+v, want %+v", got, want)
	}
	conf.Domain = "conf"
	if got := iface.MergeDNS(conf, fromIPAM); got.Domain != "conf" {
		t.Fatalf("config domain lost: %+v", got)
	}
}

func TestParseMAC(t *testing.T) {
	for _, bad := range []string{"zz", "01:00:5e:00:00:01", "00:11:22:33:44:55:66:77"} {
		if _, err := iface.ParseMAC("mac", bad); err == nil || !strings.HasPrefix(err.Error(), "mac: ") {
			t.Errorf("ParseMAC(%q) = %v, want an error naming mac", bad, err)
		}
	}
	if mac, err := iface.ParseMAC("mac", "02:00:00:00:00:01"); err != nil || mac.String() != "02:00:00:00:00:01" {
		t.Errorf("ParseMAC: %v %v", mac, err)
	}
}

// TestLifecycle creates a macvlan in a pod through the helpers, configures
// it from a result, checks it, breaks it, and deletes it.
func TestLifecycle(t *testing.T) {
	node := testnet.NewNS(t, "node")
	pod := testnet.NewNS(t, "pod")
	node.MustRun("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
	node.MustRun("ip", "link", "set", "up0", "up")
	node.MustRun("ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
	node.MustRun("ip", "route", "add", "default", "via", "192.0.2.254")

	netns, err := iface.OpenNetns(pod.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer netns.Close()
	var master, link netlink.Link
	err = node.Do(func() error {
		if _, err := iface.Master(nil, "nope"); err == nil || !strings.Contains(err.Error(), "master") {
			t.Errorf("missing master: %v", err)
		}
		master, err = iface.Master(nil, "") // the default route's link
		if err != nil {
			return err
		}
		if err := iface.CheckMTU("mtu", 9000, master); err == nil {
			t.Error("MTU above the master's accepted")
		}
		link, err = iface.Create(req(pod, "c1", "eth0"), "macvlan", netns, &netlink.Macvlan{
			LinkAttrs: netlink.LinkAttrs{ParentIndex: master.Attrs().Index, MTU: 1400},
			Mode:      netlink.MACVLAN_MODE_BRIDGE,
		}, false)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if master.Attrs().Name != "up0" {
		t.Fatalf("default-route master = %s, want up0", master.Attrs().Name)
	}
	_, ipn, _ := net.ParseCIDR("198.51.100.0/24")
	ipam := &current.Result{
		IPs:    []*current.IPConfig{{Address: net.IPNet{IP: net.ParseIP("198.51.100.7"), Mask: ipn.Mask}, Gateway: net.ParseIP("198.51.100.1")}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}, {Dst: net.IPNet{IP: net.ParseIP("203.0.113.0"), Mask: net.CIDRMask(24, 32)}, GW: net.ParseIP("198.51.100.2")}},
		DNS:    types.DNS{Nameservers: []string{"198.51.100.53"}},
	}
	res := iface.NewResult(ipam, types.DNS{}, link, pod.Path)
	if len(res.DNS.Nameservers) != 1 || *res.IPs[0].Interface != 0 {
		t.Fatalf("result: %+v", res)
	}
	err = netns.Do(func(ns.NetNS) error {
		if err := iface.Configure("eth0", res, iface.NotifyAll); err != nil {
			return err
		}
		idx, ifc, err := iface.FindInterface(res, "eth0", pod.Path)
		if err != nil {
			return err
		}
		if _, err := iface.CheckLink("eth0", iface.Want{Type: "macvlan", MAC: ifc.Mac, MTU: 1400, ParentIndex: master.Attrs().Index}); err != nil {
			return err
		}
		if _, err := iface.CheckLink("eth0", iface.Want{Type: "ipvlan"}); err == nil {
			t.Error("CheckLink accepted a wrong type")
		}
		if err := iface.CheckIPs("eth0", idx, res); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if out := pod.MustRun("sysctl", "-n", "net.ipv4.conf.eth0.arp_notify"); strings.TrimSpace(out) != "1" {
		t.Errorf("arp_notify = %q", out)
	}
	pod.MustRun("ip", "route", "del", "203.0.113.0/24")
	err = netns.Do(func(ns.NetNS) error { return iface.CheckIPs("eth0", 0, res) })
	if err == nil || !strings.Contains(err.Error(), "203.0.113.0/24") {
		t.Errorf("CheckIPs with a route missing: %v", err)
	}
	// A second link of the same name is refused, and leaves nothing behind.
	for _, id := range []string{"c1", "c2"} {
		err = node.Do(func() error {
			_, err := iface.Create(req(pod, id, "eth0"), "macvlan", netns, &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{ParentIndex: master.Attrs().Index}, Mode: netlink.MACVLAN_MODE_BRIDGE}, false)
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "CNI_IFNAME") {
			t.Errorf("duplicate ifName (container %s): %v", id, err)
		}
		if n := linkCount(t, pod); n != 2 {
			t.Errorf("pod has %d links after the failed create, want lo and eth0", n)
		}
	}
	for i := 0; i < 2; i++ {
		if err := iface.DeleteLink(req(pod, "c1", "eth0"), "macvlan"); err != nil {
			t.Fatalf("DeleteLink #%d: %v", i, err)
		}
	}
	pod.Delete()
	if err := iface.DeleteLink(req(pod, "c1", "eth0"), "macvlan"); err != nil {
		t.Fatalf("DeleteLink with the netns gone: %v", err)
	}
	if _, err := iface.OpenNetns(pod.Path); !iface.NetnsGone(err) {
		t.Fatalf("OpenNetns of a deleted netns: %v", err)
	}
}

// req is a request of network "net" for container id and ifName in pod.
func req(pod *testnet.NS, id, ifName string) *cni.Request {
	return &cni.Request{Name: "net", ContainerID: id, IfName: ifName, Netns: pod.Path}
}

// TestStagingLeftover: a plugin killed between Create's link creation and
// its rename leaves a link named StagingName(applet, req) in the pod.
// DeleteLink removes it, and the next Create for the same attachment
// replaces it (a VLAN ID or MAC it holds would otherwise refuse the new
// link). The staged link of another attachment (another container ID,
// network or applet with the same ifName: an ADD that may be running at
// this moment) is left alone by both.
func TestStagingLeftover(t *testing.T) {
	node := testnet.NewNS(t, "node")
	pod := testnet.NewNS(t, "pod")
	node.MustRun("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
	netns, err := iface.OpenNetns(pod.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer netns.Close()
	r := req(pod, "c1", "eth0")
	stage := iface.StagingName("macvlan", r)
	other := req(pod, "c2", "eth0")
	otherNet := *r
	otherNet.Name = "net2"
	eth1 := req(pod, "c1", "eth1")
	for _, o := range []string{iface.StagingName("macvlan", other), iface.StagingName("macvlan", &otherNet),
		iface.StagingName("ipvlan", r), iface.StagingName("macvlan", eth1)} {
		if o == stage {
			t.Fatalf("another attachment has staging name %q too", o)
		}
	}
	if stage != iface.StagingName("macvlan", req(pod, "c1", "eth0")) || len(stage) > 15 {
		t.Fatalf("StagingName = %q", stage)
	}
	leftover := func() {
		pod.MustRun("ip", "link", "add", stage, "type", "veth", "peer", "name", "x0")
	}
	// Another attachment's ADD, half-way: its link under its own staging name.
	inProgress := iface.StagingName("macvlan", other)
	pod.MustRun("ip", "link", "add", inProgress, "type", "veth", "peer", "name", "x1")
	leftover()
	if err := iface.DeleteLink(r, "macvlan"); err != nil {
		t.Fatalf("DeleteLink: %v", err)
	}
	if n := linkCount(t, pod); n != 3 {
		t.Errorf("pod has %d links after DeleteLink, want lo and the veth pair %s", n, inProgress)
	}
	leftover()
	err = node.Do(func() error {
		master, err := netlink.LinkByName("up0")
		if err != nil {
			return err
		}
		_, err = iface.Create(r, "macvlan", netns, &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{ParentIndex: master.Attrs().Index}, Mode: netlink.MACVLAN_MODE_BRIDGE}, false)
		return err
	})
	if err != nil {
		t.Fatalf("Create over a leftover: %v", err)
	}
	if n := linkCount(t, pod); n != 4 {
		t.Errorf("pod has %d links after Create, want lo, eth0 and the veth pair %s", n, inProgress)
	}
	pod.MustRun("ip", "link", "show", inProgress)
}

// TestDeleteCreated: the roll-back of a Create deletes that link, not a
// link that has its name by then, and is fine when it is gone already.
func TestDeleteCreated(t *testing.T) {
	node := testnet.NewNS(t, "node")
	pod := testnet.NewNS(t, "pod")
	node.MustRun("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
	netns, err := iface.OpenNetns(pod.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer netns.Close()
	var link netlink.Link
	err = node.Do(func() error {
		master, err := netlink.LinkByName("up0")
		if err != nil {
			return err
		}
		link, err = iface.Create(req(pod, "c1", "eth0"), "macvlan", netns, &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{ParentIndex: master.Attrs().Index}, Mode: netlink.MACVLAN_MODE_BRIDGE}, false)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Someone else's eth0 by the time of the roll-back.
	pod.MustRun("ip", "link", "set", "eth0", "name", "mine")
	pod.MustRun("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "theirs")
	for i := 0; i < 2; i++ {
		if err := iface.DeleteCreated(netns, link); err != nil {
			t.Fatalf("DeleteCreated #%d: %v", i, err)
		}
	}
	pod.MustRun("ip", "link", "show", "eth0")
	if out, err := pod.Command("ip", "link", "show", "mine").CombinedOutput(); err == nil {
		t.Fatalf("the created link survived its roll-back: %s", out)
	}
}

// TestDeleteLinkOthers: DeleteLink deletes the pod's ifName when it is
// this attachment's (Create marked it, or unmarked, the reference's, with
// the MAC prevResult gives it), and leaves it alone when its mark names another attachment: the DEL a
// runtime sends for a container whose ADD was refused because the pod's
// eth0 was taken.
func TestDeleteLinkOthers(t *testing.T) {
	node := testnet.NewNS(t, "node")
	pod := testnet.NewNS(t, "pod")
	node.MustRun("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
	netns, err := iface.OpenNetns(pod.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer netns.Close()
	create := func(r *cni.Request) {
		t.Helper()
		err := node.Do(func() error {
			master, err := netlink.LinkByName("up0")
			if err != nil {
				return err
			}
			_, err = iface.Create(r, "macvlan", netns, &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{ParentIndex: master.Attrs().Index}, Mode: netlink.MACVLAN_MODE_BRIDGE}, false)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	mine, other := req(pod, "c1", "eth0"), req(pod, "c2", "eth0")
	create(mine)
	if out := pod.MustRun("ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "alias "+iface.Mark(mine)) {
		t.Fatalf("eth0 lacks its mark %q: %s", iface.Mark(mine), out)
	}
	if err := iface.DeleteLink(other, "macvlan"); err != nil {
		t.Fatalf("DeleteLink of another attachment: %v", err)
	}
	pod.MustRun("ip", "link", "show", "eth0")
	if err := iface.DeleteLink(mine, "macvlan"); err != nil {
		t.Fatalf("DeleteLink: %v", err)
	}
	if n := linkCount(t, pod); n != 1 {
		t.Fatalf("pod has %d links after its own DeleteLink, want lo", n)
	}
	// An unmarked eth0 (the reference's) is deleted only when
	// prevResult ties it to the attachment by its MAC: otherwise it may
	// be another pod's (a runtime that passed the wrong netns).
	pod.MustRun("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0")
	mac := strings.TrimSpace(pod.MustRun("cat", "/sys/class/net/eth0/address"))
	for _, m := range []string{"", "02:00:00:00:00:01", mac} {
		other.Config = []byte(`{"cniVersion":"1.0.0","name":"net","type":"macvlan"}`)
		if m != "" {
			other.Config = []byte(`{"cniVersion":"1.0.0","name":"net","type":"macvlan","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"` + m + `","sandbox":"` + pod.Path + `"}]}}`)
		}
		if err := iface.DeleteLink(other, "macvlan"); err != nil {
			t.Fatalf("DeleteLink of an unmarked link: %v", err)
		}
		n := linkCount(t, pod)
		if m == mac && n != 1 {
			t.Fatalf("an unmarked eth0 with prevResult's MAC survived DeleteLink: %d links", n)
		}
		if m != mac && n == 1 {
			t.Fatalf("an unmarked eth0 that prevResult (MAC %q) does not tie was deleted", m)
		}
	}
}
