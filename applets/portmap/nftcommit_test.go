package portmap

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestNFTSecondAddAddsRulesOnly: once the tables are in place, an ADD
// commits the pod's rules and nothing else: re-sending an existing chain
// (an update) or rewriting hostports_all, the hook chains or the guard (a
// flush) would make the kernel free objects after an RCU grace period,
// which the process's exit waits for. The commit's notifications (the
// nftables multicast group) say what it changed.
func TestNFTSecondAddAddsRulesOnly(t *testing.T) {
	node := testnet.NewNS(t, "node")
	pod := func(id, ip string) *attachment {
		_, n, _ := net.ParseCIDR("10.88.0.0/24")
		n.IP = net.ParseIP(ip).To4()
		return &attachment{net: "net", id: id, snat: true, v4: n, maps: []Mapping{{8080, 80, "tcp", ""}, {53, 53, "udp", "192.168.1.1"}}}
	}
	var got []uint16
	err := node.Do(func() error {
		if err := (nftBackend{}).add(pod("c1", "10.88.0.2")); err != nil {
			return err
		}
		mon, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)})
		if err != nil {
			return fmt.Errorf("monitor: %w", err)
		}
		defer mon.Close()
		if err := (nftBackend{}).add(pod("c2", "10.88.0.3")); err != nil {
			return err
		}
		if err := mon.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return err
		}
		for len(got) == 0 || got[len(got)-1] != unix.NFT_MSG_NEWGEN { // the end of the commit's notifications
			msgs, err := mon.Receive()
			if err != nil {
				return fmt.Errorf("monitor: %w (so far %v)", err, got)
			}
			for _, m := range msgs {
				got = append(got, uint16(m.Header.Type)&0xff)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rules := 0
	for _, typ := range got[:len(got)-1] {
		if typ != unix.NFT_MSG_NEWRULE {
			t.Errorf("second ADD's commit has message type %d besides NEWRULE (%d): %v", typ, unix.NFT_MSG_NEWRULE, got)
			break
		}
		rules++
	}
	if rules == 0 {
		t.Errorf("second ADD's commit added no rule: %v", got)
	}
}
