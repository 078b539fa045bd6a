package nft_test

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/nft"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// request is an nftables message of the IPv4 family with string attributes.
func request(msgType int, flags netlink.HeaderFlags, attrs map[uint16]string) netlink.Message {
	ae := netlink.NewAttributeEncoder()
	for typ, s := range attrs {
		ae.String(typ, s)
	}
	b, _ := ae.Encode()
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msgType), Flags: flags},
		Data:   append([]byte{unix.NFPROTO_IPV4, unix.NFNETLINK_V0, 0, 0}, b...),
	}
}

// TestSock drives a Sock against the kernel in a fresh netns: a plain
// request, the kernel's errno, a dump of many datagrams, a refused batch
// and a read that times out.
func TestSock(t *testing.T) {
	node := testnet.NewNS(t, "node")
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft(8) is not installed")
	}
	// 3000 rules with long comments: the dump spans many datagrams.
	var script strings.Builder
	script.WriteString("add table ip t\nadd chain ip t c\n")
	for i := range 3000 {
		fmt.Fprintf(&script, "add rule ip t c ip saddr 10.%d.%d.1 counter accept comment \"%s%d\"\n", i/250, i%250, strings.Repeat("x", 100), i)
	}
	cmd := node.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s", err, out)
	}
	err := node.Do(func() error {
		s, err := nft.Dial()
		if err != nil {
			return err
		}
		defer s.Close()

		gen, err := s.Execute(request(unix.NFT_MSG_GETGEN, 0, nil))
		if err != nil || len(gen) != 1 {
			return fmt.Errorf("get generation: %d answers, %v", len(gen), err)
		}
		_, err = s.Execute(request(unix.NFT_MSG_GETCHAIN, 0, map[uint16]string{unix.NFTA_CHAIN_TABLE: "missing", unix.NFTA_CHAIN_NAME: "c"}))
		if !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("get a chain of a missing table: %v, want ENOENT", err)
		}
		rules, err := s.Execute(request(unix.NFT_MSG_GETRULE, netlink.Dump, map[uint16]string{unix.NFTA_RULE_TABLE: "t", unix.NFTA_RULE_CHAIN: "c"}))
		if err != nil || len(rules) != 3000 {
			return fmt.Errorf("dump the chain: %d rules, %v; want 3000", len(rules), err)
		}
		for _, r := range rules {
			if r.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWRULE) {
				return fmt.Errorf("dump the chain: a message of type %#x", r.Header.Type)
			}
		}
		// The next request on the same socket gets its own answer.
		if chains, err := s.Execute(request(unix.NFT_MSG_GETCHAIN, netlink.Dump, map[uint16]string{unix.NFTA_CHAIN_TABLE: "t"})); err != nil || len(chains) != 1 {
			return fmt.Errorf("list the chains: %d, %v; want 1", len(chains), err)
		}

		// A batch that deletes a missing chain is refused with ENOENT.
		subsys := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}
		del := request(unix.NFT_MSG_DELCHAIN, netlink.Acknowledge, map[uint16]string{unix.NFTA_CHAIN_TABLE: "t", unix.NFTA_CHAIN_NAME: "missing"})
		batch := []netlink.Message{{Header: netlink.Header{Type: unix.NFNL_MSG_BATCH_BEGIN}, Data: subsys}, del, {Header: netlink.Header{Type: unix.NFNL_MSG_BATCH_END}, Data: subsys}}
		if err := s.SendMessages(batch); err != nil {
			return err
		}
		if _, err := s.Receive(); !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete a missing chain: %v, want ENOENT", err)
		}

		// Nothing more comes: a read gives up after its timeout.
		if err := s.SetReadTimeout(50 * time.Millisecond); err != nil {
			return err
		}
		start := time.Now()
		if _, err := s.Receive(); !errors.Is(err, unix.EAGAIN) {
			return fmt.Errorf("read with nothing to come: %v, want EAGAIN", err)
		}
		if waited := time.Since(start); waited < 40*time.Millisecond {
			return fmt.Errorf("read with nothing to come returned after %v", waited)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
