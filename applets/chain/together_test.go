package chain

import (
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnibox/cnibox/applets/bandwidth"
	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
	"github.com/cnibox/cnibox/shared/veth"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// attachmentLinks makes what bridge and bandwidth make for one attachment
// in node: the veth (peer in pod) and the IFB, with their aliases.
func attachmentLinks(t *testing.T, node, pod *testnet.NS, net, cid string) (host, ifb string) {
	t.Helper()
	podNS, err := ns.GetNS(pod.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer podNS.Close()
	if err := node.Do(func() error {
		_, err := veth.Create(podNS, veth.Options{Network: net, ContainerID: cid, IfName: "eth0"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ifb, alias := bandwidth.IFB(net, cid)
	node.MustRun("ip", "link", "add", "name", ifb, "type", "ifb")
	node.MustRun("ip", "link", "set", "dev", ifb, "alias", alias)
	return veth.HostName(cid, "eth0"), ifb
}

// TestDeleteTogether: the attachment's veth and IFB go in one request;
// a link of someone else's in the group, or a veth or IFB that is not
// this attachment's, makes it do nothing (the inner DELs delete theirs).
func TestDeleteTogether(t *testing.T) {
	testnet.RequireRoot(t)
	node, pod := testnet.NewNS(t, "node"), testnet.NewNS(t, "pod")
	req := &cni.Request{Command: cni.CmdDel, Name: "net", ContainerID: "c1", IfName: "eth0"}
	host, ifb := attachmentLinks(t, node, pod, "net", "c1")
	if err := node.Do(func() error { return deleteTogether(req) }); err != nil {
		t.Fatal(err)
	}
	links := node.MustRun("ip", "-o", "link", "show")
	if strings.Contains(links, host) || strings.Contains(links, ifb) {
		t.Errorf("after deleteTogether the node still has %s or %s:\n%s", host, ifb, links)
	}
	if got := pod.MustRun("ip", "-o", "link", "show"); strings.Contains(got, "eth0") {
		t.Errorf("the pod's end is still there:\n%s", got)
	}

	// Someone else's link in the group: nothing is deleted.
	pod2 := testnet.NewNS(t, "pod")
	req2 := &cni.Request{Command: cni.CmdDel, Name: "net", ContainerID: "c2", IfName: "eth0"}
	host, ifb = attachmentLinks(t, node, pod2, "net", "c2")
	node.MustRun("ip", "link", "add", "name", "other0", "type", "veth", "peer", "name", "other1")
	node.MustRun("ip", "link", "set", "dev", "other0", "group", fmt.Sprint(attachmentGroup(req2)))
	err := node.Do(func() error { return deleteTogether(req2) })
	if err == nil || !strings.Contains(err.Error(), "other0") {
		t.Errorf("deleteTogether with other0 in the group: %v, want a refusal naming it", err)
	}
	links = node.MustRun("ip", "-o", "link", "show")
	for _, l := range []string{host, ifb, "other0"} {
		if !strings.Contains(links, l) {
			t.Errorf("%s was deleted although other0 shares the group:\n%s", l, links)
		}
	}

	// Not this attachment's: another container's veth alias.
	req3 := &cni.Request{Command: cni.CmdDel, Name: "other-net", ContainerID: "c2", IfName: "eth0"}
	if err := node.Do(func() error { return deleteTogether(req3) }); err == nil {
		t.Errorf("deleteTogether of network other-net took c2's veth of net")
	}
	if links := node.MustRun("ip", "-o", "link", "show"); !strings.Contains(links, host) {
		t.Errorf("%s deleted by another network's DEL", host)
	}
}

// TestDelRulesFirst: with bandwidth and bridge in process, DEL runs the
// DELs that touch no link (portmap, firewall) and the rules part of the
// main plugin's DEL (DelRules) while the links are deleted, then the
// other DELs in reverse order, the main plugin's whole DEL last.
func TestDelRulesFirst(t *testing.T) {
	node := testnet.NewNS(t, "node")
	var calls []string
	record := func(name, what string) func(*cni.Request) error {
		return func(r *cni.Request) error {
			if r.Command != cni.CmdDel {
				t.Errorf("%s %s ran with command %s", name, what, r.Command)
			}
			calls = append(calls, name+" "+what)
			return nil
		}
	}
	applets := map[string]*cni.Applet{}
	for _, name := range []string{"bridge", "portmap", "firewall", "tuning", "bandwidth"} {
		applets[name] = &cni.Applet{Name: name, Del: record(name, "DEL")}
	}
	applets["bridge"].DelRules = record("bridge", "rules")
	old := cni.Lookup
	cni.Lookup = func(name string) *cni.Applet { return applets[name] }
	t.Cleanup(func() { cni.Lookup = old })
	conf := `{"cniVersion":"1.0.0","name":"net","type":"cnibox","prevResult":{"cniVersion":"1.0.0"},
		"plugins":[{"type":"bridge"},{"type":"portmap"},{"type":"firewall"},{"type":"tuning"},{"type":"bandwidth"}]}`
	if err := node.Do(func() error { return Del(request(cni.CmdDel, conf)) }); err != nil {
		t.Fatal(err)
	}
	want := "firewall DEL, portmap DEL, bridge rules, bandwidth DEL, tuning DEL, bridge DEL"
	if got := strings.Join(calls, ", "); got != want {
		t.Errorf("DEL ran %s, want %s", got, want)
	}
}
