package firewall

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestNFTSecondAddAddsRulesOnly: once the table is in place, an ADD
// commits the pod's rules and nothing else: re-sending an existing chain
// (an update) or rewriting the forward chain (a flush) would make the
// kernel free objects after an RCU grace period, which the process's exit
// waits for. The commit's notifications (the nftables multicast group)
// say what it changed.
func TestNFTSecondAddAddsRulesOnly(t *testing.T) {
	node := testnet.NewNS(t, "node")
	pod := func(id, ip string) *attachment {
		return &attachment{Net: "net", ID: id, IfName: "eth0", Backend: "nftables", IPs: []netip.Prefix{netip.MustParsePrefix(ip)}}
	}
	var got []uint16
	err := node.Do(func() error {
		if err := (nftBackend{}).add(pod("c1", "10.88.0.2/32")); err != nil {
			return err
		}
		mon, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)})
		if err != nil {
			return fmt.Errorf("monitor: %w", err)
		}
		defer mon.Close()
		if err := (nftBackend{}).add(pod("c2", "10.88.0.3/32")); err != nil {
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
	want := []uint16{unix.NFT_MSG_NEWRULE, unix.NFT_MSG_NEWRULE, unix.NFT_MSG_NEWGEN}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("second ADD's commit: message types %v, want %v (NEWRULE NEWRULE NEWGEN)", got, want)
	}
}
