package portmap_test

import (
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// world is a node with a machine outside it and a machine behind it:
//
//	outside (192.168.77.2, fd77::2) --ext0-- node (192.168.77.1, fd77::1)
//	node (10.99.0.254) --far0-- far (10.99.0.1): a host the node routes to
//
// Pods hang off the node's bridge, made by the chain under test.
type world struct {
	r       *testnet.Runtime
	outside *testnet.NS
	far     *testnet.NS
}

const (
	nodeIP  = "192.168.77.1"
	nodeIP6 = "fd77::1"
	farIP   = "10.99.0.1"
)

func newWorld(t *testing.T) *world {
	t.Helper()
	r := testnet.NewRuntime(t)
	r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
	w := &world{r: r, outside: testnet.NewNS(t, "outside"), far: testnet.NewNS(t, "far")}
	n := r.Node
	n.MustRun("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	n.MustRun("ip", "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", w.outside.Name)
	n.MustRun("ip", "addr", "add", nodeIP+"/24", "dev", "ext0")
	n.MustRun("ip", "addr", "add", nodeIP6+"/64", "dev", "ext0", "nodad")
	n.MustRun("ip", "link", "set", "ext0", "up")
	o := w.outside
	o.MustRun("ip", "addr", "add", "192.168.77.2/24", "dev", "eth0")
	o.MustRun("ip", "addr", "add", "fd77::2/64", "dev", "eth0", "nodad")
	o.MustRun("ip", "link", "set", "eth0", "up")
	o.MustRun("ip", "route", "add", "default", "via", nodeIP)
	o.MustRun("ip", "-6", "route", "add", "default", "via", nodeIP6)
	n.MustRun("ip", "link", "add", "far0", "type", "veth", "peer", "name", "eth0", "netns", w.far.Name)
	n.MustRun("ip", "addr", "add", "10.99.0.254/24", "dev", "far0")
	n.MustRun("ip", "link", "set", "far0", "up")
	w.far.MustRun("ip", "addr", "add", farIP+"/24", "dev", "eth0")
	w.far.MustRun("ip", "link", "set", "eth0", "up")
	w.far.MustRun("ip", "route", "add", "default", "via", "10.99.0.254")
	return w
}

// rules returns what the node's firewall holds, for leak checks.
func rules(t *testing.T, r *testnet.Runtime) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}} {
		out, err := r.Node.Run(cmd[0], cmd[1:]...)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(out)
	}
	return b.String()
}
