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
