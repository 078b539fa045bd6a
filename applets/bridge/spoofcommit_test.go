package bridge

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestSpoofCheckSecondSetupCreatesOnly: once the PREROUTING chain is in
// place, a pod's spoof check creates its two chains and their rules and
// nothing else: re-sending PREROUTING (an update) or flushing a chain would
// make the kernel free objects after an RCU grace period, which the
// process's exit waits for. The commit's notifications (the nftables
// multicast group) say what it changed.
func TestSpoofCheckSecondSetupCreatesOnly(t *testing.T) {
	node := testnet.NewNS(t, "node")
	mac, _ := net.ParseMAC("02:00:00:00:00:02")
	count := map[uint16]int{}
	err := node.Do(func() error {
		if err := setupSpoofCheck(spoofID("c1", "eth0"), "veth1", mac, []netip.Addr{netip.MustParseAddr("10.88.0.2")}); err != nil {
			return err
		}
		mon, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)})
		if err != nil {
			return fmt.Errorf("monitor: %w", err)
		}
		defer mon.Close()
		if err := setupSpoofCheck(spoofID("c2", "eth0"), "veth2", mac, []netip.Addr{netip.MustParseAddr("10.88.0.3")}); err != nil {
			return err
		}
		if err := mon.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return err
		}
		for count[unix.NFT_MSG_NEWGEN] == 0 { // the end of the commit's notifications
			msgs, err := mon.Receive()
			if err != nil {
				return fmt.Errorf("monitor: %w (so far %v)", err, count)
			}
			for _, m := range msgs {
				count[uint16(m.Header.Type)&0xff]++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if count[unix.NFT_MSG_NEWCHAIN] != 2 || count[unix.NFT_MSG_NEWRULE] == 0 || len(count) != 3 {
		t.Errorf("second spoof check's commit: message type counts %v, want 2 NEWCHAIN (%d), NEWRULEs (%d), NEWGEN (%d) and nothing else",
			count, unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_NEWRULE, unix.NFT_MSG_NEWGEN)
	}
}
