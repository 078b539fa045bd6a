package dhcp_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// The release tests: DEL of a main applet with dhcp IPAM releases the
// lease at the server (dnsmasq's lease file loses it) on a node that has
// no route to the server itself, as when the master carries no address
// of the pod network: the DHCPRELEASE can only leave from the pod's
// interface, so DEL must release IPAM before it deletes (or moves out)
// that interface, as the reference does. Each runs once straight and once
// with a daemon restart between ADD and DEL (the restarted daemon
// resumes the lease from its lease file and releases it).

// releaseCase is one main applet on the lab: its plugin config (without
// ipam) and the kernel features it needs.
type releaseCase struct {
	conf     string
	features []string
	// setup prepares the lab's node for the applet (after the node lost
	// its address on the lab network).
	setup func(t *testing.T, l *lab)
	// daemonArgs are extra flags of the dhcp daemon.
	daemonArgs []string
	// bridge says the lab has br-dhcp.
	bridge bool
}

func TestReleaseMacvlan(t *testing.T) {
	testRelease(t, releaseCase{conf: `"type":"macvlan","master":"uplink","mode":"bridge"`})
}

// TestReleaseHostDevice: host-device moves the node's uplink itself into
// the pod; DEL used to move it back before the release.
func TestReleaseHostDevice(t *testing.T) {
	testRelease(t, releaseCase{conf: `"type":"host-device","device":"uplink"`})
}

// TestReleaseBridge: our bridge on br-dhcp (uplink is its port). Unlike
// the reference bridge, which deletes the pod's veth before IPAM DEL, it
// runs dhcp's DEL first.
func TestReleaseBridge(t *testing.T) {
	testRelease(t, releaseCase{conf: `"type":"bridge","bridge":"br-dhcp"`, bridge: true})
}

// TestReleaseIPVlan: ipvlan L2 on uplink. The slave shares the master's
// MAC, so the daemon asks for broadcast replies (a unicast OFFER to an
// address nobody has yet would go to the master).
func TestReleaseIPVlan(t *testing.T) {
	testRelease(t, releaseCase{
		conf:       `"type":"ipvlan","master":"uplink","mode":"l2"`,
		features:   []string{"ipvlan"},
		daemonArgs: []string{"-broadcast"},
	})
}

// TestReleaseVlan: VLAN 10 on br-dhcp, made VLAN-aware so that the
// bridge untags VLAN 10 towards the server (uplink's PVID).
func TestReleaseVlan(t *testing.T) {
	testRelease(t, releaseCase{
		conf:     `"type":"vlan","master":"br-dhcp","vlanId":10`,
		features: []string{"vlan", "bridge-vlan"},
		bridge:   true,
		setup: func(t *testing.T, l *lab) {
			n := l.R.Node
			n.MustRun("ip", "link", "set", "br-dhcp", "type", "bridge", "vlan_filtering", "1")
			n.MustRun("bridge", "vlan", "add", "dev", "br-dhcp", "vid", "10", "self")
			n.MustRun("bridge", "vlan", "add", "dev", "uplink", "vid", "10", "pvid", "untagged")
		},
	})
}

func testRelease(t *testing.T, c releaseCase) {
	if len(c.features) > 0 {
		testnet.RequireKernel(t, c.features...)
	}
	for _, restart := range []bool{false, true} {
		name := "straight"
		if restart {
			name = "daemon-restart"
		}
		t.Run(name, func(t *testing.T) {
			l := buildLab(t, c.bridge)
			// The node has no address (and so no route) on the lab's
			// network: only the pod's interface reaches the server.
			dev := "uplink"
			if c.bridge {
				dev = "br-dhcp"
			}
			l.R.Node.MustRun("ip", "addr", "flush", "dev", dev)
			if c.setup != nil {
				c.setup(t, l)
			}
			l.StartDaemon(c.daemonArgs...)
			list := l.R.Conflist(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"dhcp-release","plugins":[{%s,
				"ipam":{"type":"dhcp","daemonSocketPath":%q}}]}`, c.conf, l.Sock))
			pod := l.R.Pod(t)
			a := l.R.Attach(pod, "eth0")
			res, err := l.R.Add(list, a)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			cur := asCurrent(t, res)
			if len(cur.IPs) != 1 {
				t.Fatalf("result IPs = %v", cur.IPs)
			}
			ip := cur.IPs[0].Address.IP.String()
			held := func() bool { return strings.Contains(l.serverLeases(), " "+ip+" ") }
			if !held() {
				t.Fatalf("dnsmasq has no lease for %s:\n%s", ip, l.serverLeases())
			}
			if restart {
				l.StopDaemon()
				l.StartDaemon(c.daemonArgs...)
			}
			if err := l.R.Del(list, a); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			testnet.WaitFor(t, 5*time.Second, "dnsmasq to drop the released lease of "+ip, func() bool { return !held() })
			if log := l.readDaemonLog(); strings.Contains(log, "the server will let the lease expire") {
				t.Errorf("the daemon could not release:\n%s", log)
			}
			if err := l.R.Del(list, a); err != nil {
				t.Fatalf("second DEL: %v", err)
			}
		})
	}
}
