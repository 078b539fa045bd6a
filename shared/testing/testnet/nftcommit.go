package testnet

import (
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// NFTCommit runs f in the calling thread's netns and returns the kinds of
// the nftables notifications its commit sent ("NEWRULE", "NEWCHAIN", ...,
// ending with "NEWGEN"), as the nftables multicast group reports them. A
// commit that deletes or updates objects (a DEL*, a re-sent chain, a
// flush) makes the kernel free them after an RCU grace period, which the
// closing of the committing socket waits for; tests use this to show that
// a steady-state ADD only adds. Call it inside NS.Do.
func NFTCommit(f func() error) ([]string, error) {
	mon, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)})
	if err != nil {
		return nil, fmt.Errorf("nftables monitor: %w", err)
	}
	defer mon.Close()
	if err := f(); err != nil {
		return nil, err
	}
	if err := mon.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return nil, err
	}
	var got []string
	for len(got) == 0 || got[len(got)-1] != "NEWGEN" { // the end of the commit's notifications
		msgs, err := mon.Receive()
		if err != nil {
			return got, fmt.Errorf("nftables monitor: %w (so far %v)", err, got)
		}
		for _, m := range msgs {
			got = append(got, nftMsgName(int(m.Header.Type)&0xff))
		}
	}
	return got, nil
}

func nftMsgName(typ int) string {
	switch typ {
	case unix.NFT_MSG_NEWTABLE:
		return "NEWTABLE"
	case unix.NFT_MSG_DELTABLE:
		return "DELTABLE"
	case unix.NFT_MSG_NEWCHAIN:
		return "NEWCHAIN"
	case unix.NFT_MSG_DELCHAIN:
		return "DELCHAIN"
	case unix.NFT_MSG_NEWRULE:
		return "NEWRULE"
	case unix.NFT_MSG_DELRULE:
		return "DELRULE"
	case unix.NFT_MSG_NEWSET:
		return "NEWSET"
	case unix.NFT_MSG_DELSET:
		return "DELSET"
	case unix.NFT_MSG_NEWGEN:
		return "NEWGEN"
	}
	return fmt.Sprint(typ)
}
