package ipmasq

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestNFTSecondSetupAddsRulesOnly: once the table is in place, an ADD
// commits new rules and nothing else. Re-sending an existing chain (an
// update) or rewriting postrouting (a flush) would make the kernel free
// objects after an RCU grace period, which the process's exit waits for.
// The commit's notifications (the nftables multicast group) say what it
// changed.
func TestNFTSecondSetupAddsRulesOnly(t *testing.T) {
	node := testnet.NewNS(t, "node")
	var got []string
	err := node.Do(func() error {
		if err := Setup(NFTables, Attachment{Network: "mnet", ContainerID: "c1", IfName: "eth0"}, ips("10.1.0.2/24")); err != nil {
			return err
		}
		mon, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)})
		if err != nil {
			return fmt.Errorf("monitor: %w", err)
		}
		defer mon.Close()
		if err := Setup(NFTables, Attachment{Network: "mnet", ContainerID: "c2", IfName: "eth0"}, ips("10.1.0.3/24", "fd00::3/64")); err != nil {
			return err
		}
		if err := mon.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return err
		}
		for !slices.Contains(got, "NEWGEN") { // the end of the commit's notifications
			msgs, err := mon.Receive()
			if err != nil {
				return fmt.Errorf("monitor: %w (so far %v)", err, got)
			}
			for _, m := range msgs {
				got = append(got, msgName(int(m.Header.Type)&0xff))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"NEWRULE", "NEWRULE", "NEWGEN"}; !slices.Equal(got, want) {
		t.Errorf("second Setup's commit: %v, want %v", got, want)
	}
}

func msgName(typ int) string {
	switch typ {
	case unix.NFT_MSG_NEWRULE:
		return "NEWRULE"
	case unix.NFT_MSG_DELRULE:
		return "DELRULE"
	case unix.NFT_MSG_NEWCHAIN:
		return "NEWCHAIN"
	case unix.NFT_MSG_DELCHAIN:
		return "DELCHAIN"
	case unix.NFT_MSG_NEWTABLE:
		return "NEWTABLE"
	case unix.NFT_MSG_NEWGEN:
		return "NEWGEN"
	}
	return fmt.Sprint(typ)
}
