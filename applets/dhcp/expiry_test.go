package dhcp_test

import (
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestExpiry: a lease that cannot be renewed runs out; the pod's link is
// then down (the address is no longer ours) except while the daemon asks
// for a new lease, and up again once it has one. dnsmasq gives no lease
// shorter than 2 minutes, so this test's server is a small Go one (6 s
// leases) that can be told to stop answering.
func TestExpiry(t *testing.T) {
	l := newMacvlanLab(t)
	l.Dnsmasq.Process.Signal(syscall.SIGTERM)
	l.Dnsmasq.Wait()

	var answering atomic.Bool
	answering.Store(true)
	leased := net.IPv4(10, 99, 0, 150)
	handler := func(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
		if !answering.Load() {
			return
		}
		var typ dhcpv4.MessageType
		switch m.MessageType() {
		case dhcpv4.MessageTypeDiscover:
			typ = dhcpv4.MessageTypeOffer
		case dhcpv4.MessageTypeRequest:
			typ = dhcpv4.MessageTypeAck
		default:
			return
		}
		resp, err := dhcpv4.NewReplyFromRequest(m,
			dhcpv4.WithMessageType(typ),
			dhcpv4.WithYourIP(leased),
			dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			dhcpv4.WithRouter(net.ParseIP(serverIP)),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(serverIP))),
			dhcpv4.WithLeaseTime(6),
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(2*time.Second)),
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(4*time.Second)),
		)
		if err == nil {
			conn.WriteTo(resp.ToBytes(), peer)
		}
	}
	var srv *server4.Server
	if err := l.Server.Do(func() (err error) {
		srv, err = server4.NewServer("srv0", &net.UDPAddr{Port: dhcpv4.ServerPort}, handler)
		return err
	}); err != nil {
		t.Fatalf("start the DHCP server: %v", err)
	}
	go srv.Serve()
	t.Cleanup(func() { srv.Close() })

	l.StartDaemon()
	list := l.R.Conflist(l.macvlanList("1.1.0", "dhcp-expiry", ""))
	pod := l.R.Pod(t)
	if _, err := l.R.Add(list, l.R.Attach(pod, "eth0")); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	testnet.WaitFor(t, 5*time.Second, "a renewal", func() bool {
		return strings.Contains(l.readDaemonLog(), "renew: 10.99.0.150")
	})

	answering.Store(false)
	testnet.WaitFor(t, 20*time.Second, "the link to go down after expiry", func() bool { return !linkUp(t, pod) })
	if !strings.Contains(l.readDaemonLog(), "expired") {
		t.Errorf("the daemon did not log the expiry:\n%s", l.readDaemonLog())
	}

	answering.Store(true)
	testnet.WaitFor(t, 20*time.Second, "a new lease after expiry", func() bool {
		return strings.Contains(l.readDaemonLog(), "new lease on 10.99.0.150 after expiry")
	})
	testnet.WaitFor(t, 2*time.Second, "the link to be up again", func() bool { return linkUp(t, pod) })
	time.Sleep(time.Second)
	if !linkUp(t, pod) {
		t.Error("the link went down again after the new lease")
	}
	if out := pod.MustRun("ip", "route", "show", "default"); !strings.Contains(out, "via "+serverIP) {
		t.Errorf("the default route did not come back: %q", out)
	}
	if err := pod.Ping(serverIP); err != nil {
		t.Errorf("ping the server after the new lease: %v", err)
	}
}

func linkUp(t *testing.T, pod *testnet.NS) bool {
	out := pod.MustRun("ip", "-o", "link", "show", "eth0")
	return strings.Contains(out, ",UP") || strings.Contains(out, "<UP")
}
