package iptables

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// writeCorpus is every rule shape the applets write on ADD (bridge's
// ipMasq, portmap, firewall), per family and table, as their batches
// have them.
var writeCorpus = map[Family]map[string][]string{
	IPv4: {
		"nat": {
			":CNI-HOSTPORT-SETMARK", ":CNI-HOSTPORT-MASQ", ":CNI-HOSTPORT-DNAT", ":CNI-DN-0123456789abcdef01234", ":CNI-0123456789abcdef01234567",
			`-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000`,
			"-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE",
			"-A CNI-HOSTPORT-MASQ -m mark --mark 0x4000 -j MASQUERADE",
			"-A CNI-HOSTPORT-MASQ -m mark ! --mark 0x1/0x3 -j RETURN",
			`-I POSTROUTING 1 -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ`,
			"-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
			"-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
			`-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"0123456789abcdef\"" -m multiport --dports 8080,8443,1,65535 -j CNI-DN-0123456789abcdef01234`,
			`-A CNI-HOSTPORT-DNAT -p udp -m comment --comment "dnat name: \"cbr0\" id: \"0123456789abcdef\"" -m multiport --dports 53 -j CNI-DN-0123456789abcdef01234`,
			`-A CNI-HOSTPORT-DNAT -p sctp -m comment --comment "dnat name: \"cbr0\" id: \"0123456789abcdef\"" -m multiport --dports 9,10,11,12,13,14,15,16,17,18,19,20,21,22,23 -d 192.0.2.7/32 ! -s 10.0.0.0/8 -j CNI-DN-0123456789abcdef01234`,
			"-A CNI-DN-0123456789abcdef01234 -s 10.88.0.0/16 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
			"-A CNI-DN-0123456789abcdef01234 -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
			"-A CNI-DN-0123456789abcdef01234 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80",
			"-A CNI-DN-0123456789abcdef01234 -d 192.168.1.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.88.0.2:5353",
			"-A CNI-DN-0123456789abcdef01234 -s 10.88.0.0/20 -p udp -m udp ! --sport 7 -j CNI-HOSTPORT-SETMARK",
			"-A CNI-DN-0123456789abcdef01234 -s 127.0.0.1/32 -p sctp -m sctp --dport 9000 -j CNI-HOSTPORT-SETMARK",
			"-A CNI-DN-0123456789abcdef01234 -p sctp -m sctp --dport 9000 -j DNAT --to-destination 10.88.0.2:90",
			`-A CNI-0123456789abcdef01234567 -d 10.88.0.0/16 -m comment --comment "name: \"cbr0\" id: \"0123456789abcdef\"" -j ACCEPT`,
			`-A CNI-0123456789abcdef01234567 ! -d 224.0.0.0/4 -m comment --comment "name: \"cbr0\" id: \"0123456789abcdef\"" -j MASQUERADE`,
			`-A POSTROUTING -s 10.88.0.2 -m comment --comment "name: \"cbr0\" id: \"0123456789abcdef\"" -j CNI-0123456789abcdef01234567`,
			`-A POSTROUTING -s 10.88.0.3/32 -m comment --comment "a \\ backslash" -j CNI-0123456789abcdef01234567`,
		},
		"filter": {
			":CNI-HOSTPORT-GUARD", ":CNI-FORWARD", ":CNI-ADMIN", ":CNI-ISOLATION-STAGE-1", ":CNI-ISOLATION-STAGE-2",
			`-A CNI-HOSTPORT-GUARD -d 127.0.0.0/8 ! -i lo -m comment --comment "cnibox portmap: drop martians to 127.0.0.0/8 that route_localnet lets in" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`,
			"-I INPUT 1 -j CNI-HOSTPORT-GUARD",
			`-I FORWARD 1 -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD`,
			`-I CNI-FORWARD 1 -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN`,
			"-A CNI-FORWARD -d 10.88.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			"-A CNI-FORWARD -s 10.88.0.2/32 -j ACCEPT",
			"-A CNI-FORWARD -m conntrack --ctstate NEW,INVALID,UNTRACKED,SNAT -j DROP",
			"-I FORWARD 1 -j CNI-ISOLATION-STAGE-1",
			"-A CNI-ISOLATION-STAGE-1 -i cni0 ! -o cni0 -j CNI-ISOLATION-STAGE-2",
			"-A CNI-ISOLATION-STAGE-1 -i cni0 -o cni0 -j DROP",
			"-A CNI-ISOLATION-STAGE-1 -j RETURN",
			"-A CNI-ISOLATION-STAGE-2 -o cni0 -j DROP",
			"-A CNI-ISOLATION-STAGE-2 -i veth+ -o br-very-long-na -g CNI-ADMIN",
			"-A CNI-ISOLATION-STAGE-2 -j RETURN",
		},
	},
	IPv6: {
		"nat": {
			":CNI-HOSTPORT-SETMARK", ":CNI-HOSTPORT-MASQ", ":CNI-HOSTPORT-DNAT", ":CNI-DN-0123456789abcdef01234", ":CNI-0123456789abcdef01234567",
			`-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000`,
			"-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE",
			`-I POSTROUTING 1 -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ`,
			"-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
			"-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
			`-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"0123456789abcdef\"" -m multiport --dports 8080 -j CNI-DN-0123456789abcdef01234`,
			"-A CNI-DN-0123456789abcdef01234 -s fd00:88::/64 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
			"-A CNI-DN-0123456789abcdef01234 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:88::2]:80",
			"-A CNI-DN-0123456789abcdef01234 -d 2001:db8::1/128 -p udp -m udp --dport 53 -j DNAT --to-destination [fd00:88::2]:53",
			"-A CNI-DN-0123456789abcdef01234 -p sctp -m sctp --dport 9000 -j DNAT --to-destination [fd00:88::2]:90",
			`-A CNI-0123456789abcdef01234567 -d fd00:88::/64 -m comment --comment "name: \"cbr0\" id: \"0123456789abcdef\"" -j ACCEPT`,
			`-A CNI-0123456789abcdef01234567 ! -d ff00::/8 -m comment --comment "name: \"cbr0\" id: \"0123456789abcdef\"" -j MASQUERADE`,
			`-A CNI-0123456789abcdef01234567 -d fd00:88:0:4::/62 -j RETURN`,
			`-A POSTROUTING -s fd00:88::2 -m comment --comment "name: \"cbr0\" id: \"0123456789abcdef\"" -j CNI-0123456789abcdef01234567`,
		},
		"filter": {
			":CNI-FORWARD", ":CNI-ADMIN",
			`-I FORWARD 1 -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD`,
			`-I CNI-FORWARD 1 -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN`,
			"-A CNI-FORWARD -d fd00:88::2/128 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			"-A CNI-FORWARD -s fd00:88::2/128 -j ACCEPT",
		},
	},
}

// corpusBatches turns a corpus table into a Batch.
func corpusBatch(table string, lines []string) *Batch {
	b := NewBatch(table)
	for _, l := range lines {
		if c, ok := strings.CutPrefix(l, ":"); ok {
			b.Chain(c)
		} else {
			b.Rule("%s", l)
		}
	}
	return b
}

// restoreCorpus writes the family's whole corpus into n with
// iptables-restore and returns its batches.
func restoreCorpus(t *testing.T, n *testnet.NS, f Family) []*Batch {
	t.Helper()
	var batches []*Batch
	for _, table := range []string{"nat", "filter"} {
		batches = append(batches, corpusBatch(table, writeCorpus[f][table]))
	}
	in, err := render(batches)
	if err != nil {
		t.Fatal(err)
	}
	cmd := n.Command(f.tool("-restore"), "--noflush")
	cmd.Stdin = strings.NewReader(in)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iptables-restore: %v: %s", err, out)
	}
	return batches
}

// primeTables makes the tables and the built-in chains a batch uses, as
// iptables-nft does on a node's first rule: a rule added and deleted.
func primeTables(t *testing.T, n *testnet.NS, f Family) {
	t.Helper()
	var in strings.Builder
	for table, chains := range builtin {
		in.WriteString("*" + table + "\n")
		for c := range chains {
			fmt.Fprintf(&in, "-A %s -j RETURN\n-D %s -j RETURN\n", c, c)
		}
		in.WriteString("COMMIT\n")
	}
	cmd := n.Command(f.tool("-restore"), "--noflush")
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("prime: %v: %s", err, out)
	}
}

// TestWriteNFTLikeIPTables writes every shape of the corpus once through
// iptables-restore and once in process, each in a node netns of its own,
// and requires the same kernel state: every chain's and rule's netlink
// attributes byte for byte (handles and positions aside), and the same
// iptables-save text.
func TestWriteNFTLikeIPTables(t *testing.T) {
	for _, f := range []Family{IPv4, IPv6} {
		if !NFT(f) {
			t.Skipf("%s here is not iptables-nft", f.Name())
		}
		t.Run(f.Name(), func(t *testing.T) {
			// Fresh nodes: the tables and built-in chains are made on the
			// way, as iptables-nft makes them.
			ref, mine := testnet.NewNS(t, "ipt"), testnet.NewNS(t, "nft")
			batches := restoreCorpus(t, ref, f)
			if err := mine.Do(func() error { return writeNFT(f, batches) }); err != nil {
				t.Fatalf("writeNFT: %v", err)
			}
			want, got := rawRuleset(t, ref, f), rawRuleset(t, mine, f)
			if len(want) == 0 {
				t.Fatal("read no rules")
			}
			for k, w := range want {
				if g, ok := got[k]; !ok {
					t.Errorf("%s: only iptables-restore wrote it:\n%x", k, w)
				} else if !bytes.Equal(g, w) {
					t.Errorf("%s differs:\niptables-restore %x\nin process        %x", k, w, g)
				}
			}
			for k, g := range got {
				if _, ok := want[k]; !ok {
					t.Errorf("%s: only the in-process write made it:\n%x", k, g)
				}
			}
			if w, g := save(t, ref, f), save(t, mine, f); w != g {
				t.Errorf("iptables-save differs:\niptables-restore:\n%s\nin process:\n%s", w, g)
			}
			// A second write of the shared chains' declarations flushes
			// them, as iptables-restore --noflush does.
			again := NewBatch("filter")
			again.Chain("CNI-FORWARD")
			again.Rule("-A CNI-FORWARD -s %s -j ACCEPT", map[Family]string{IPv4: "10.1.2.3/32", IPv6: "fd00::3/128"}[f])
			for _, n := range []*testnet.NS{ref, mine} {
				cmd := n.Command(f.tool("-restore"), "--noflush")
				if n == mine {
					if err := mine.Do(func() error { return writeNFT(f, []*Batch{again}) }); err != nil {
						t.Fatalf("writeNFT again: %v", err)
					}
					continue
				}
				cmd.Stdin = strings.NewReader(again.String())
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("iptables-restore again: %v: %s", err, out)
				}
			}
			if w, g := save(t, ref, f), save(t, mine, f); w != g {
				t.Errorf("after a flush, iptables-save differs:\niptables-restore:\n%s\nin process:\n%s", w, g)
			}
		})
	}
}

// TestWriteNFTDeclines: what the in-process writer does not know goes to
// iptables-restore, and a declined batch changes nothing.
func TestWriteNFTDeclines(t *testing.T) {
	if !NFT(IPv4) {
		t.Skip("iptables here is not iptables-nft")
	}
	n := testnet.NewNS(t, "decl")
	primeTables(t, n, IPv4)
	n.MustRun("nft", "add", "chain", "ip", "filter", "NATIVE")
	n.MustRun("nft", "add", "chain", "ip", "filter", "weird", "{ type filter hook forward priority 10; }")
	before := save(t, n, IPv4)
	for _, line := range []string{
		"-D FORWARD -s 10.0.0.1/32 -j ACCEPT",
		"-I FORWARD 2 -j ACCEPT",
		"-A FORWARD -m sctp --dport 9 -j ACCEPT",
		"-A FORWARD -p sctp -m sctp --sport 9 -j ACCEPT",
		"-A FORWARD -p tcp -m tcp --dport 80:90 -j ACCEPT",
		"-A FORWARD -m limit --limit 1/s -j ACCEPT",
		"-A FORWARD -j LOG",
		"-A FORWARD -j NATIVE",
		"-A FORWARD -j CNI-ABSENT",
		"-A FORWARD -s 10.0.0.1/8 -j ACCEPT",
		"-A FORWARD -s ::1 -j ACCEPT",
		"-A FORWARD -m comment --comment 'single' -j ACCEPT",
		"-A FORWARD -p tcp -m multiport --dports 1:5 -j ACCEPT",
		"-A FORWARD -m conntrack --ctstatus SEEN_REPLY -j ACCEPT",
		"-A FORWARD -j MASQUERADE --random-fully",
		"-A FORWARD -m mark --mark 010 -j ACCEPT",
		"-A weird -j ACCEPT",
		"-A FORWARD -i br-very-long-nam -j ACCEPT",
	} {
		b := NewBatch("filter")
		b.Rule("-A FORWARD -s 10.9.9.9/32 -j ACCEPT") // would apply, if the batch did
		b.Rule("%s", line)
		if err := n.Do(func() error { return writeNFT(IPv4, []*Batch{b}) }); !errors.Is(err, errDeclined) {
			t.Errorf("%q: %v, want declined", line, err)
		}
	}
	if after := save(t, n, IPv4); after != before {
		t.Errorf("a declined batch changed the table:\n%s", after)
	}
	// A rule iptables-restore refuses is refused by the kernel in
	// process too, and nothing of the batch applies.
	b := NewBatch("filter")
	b.Chain("CNI-NEW")
	b.Rule("-A CNI-NEW -s 10.0.0.1/32 -j ACCEPT")
	b.Rule("-A FORWARD -p udp -m multiport --dports 1 -j CNI-NEW")
	b.Rule("-X CNI-NEW") // still referenced
	if err := n.Do(func() error { return writeNFT(IPv4, []*Batch{b}) }); err == nil || errors.Is(err, errDeclined) {
		t.Errorf("deleting a referenced chain: %v, want the kernel's refusal", err)
	}
	if after := save(t, n, IPv4); after != before {
		t.Errorf("a refused transaction changed the table:\n%s", after)
	}
}

// save is iptables-save of the family without its comment lines (which
// carry the time) and counters.
func save(t *testing.T, n *testnet.NS, f Family) string {
	t.Helper()
	out := n.MustRun(f.tool("-save"))
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "#") {
			keep = append(keep, regexp.MustCompile(`\[\d+:\d+\]`).ReplaceAllString(l, "[0:0]"))
		}
	}
	return strings.Join(keep, "\n")
}

// rawRuleset reads every chain and rule of the family's tables as the
// kernel reports them: key "table chain" (and "#i" for the chain's i-th
// rule), value the message's attributes without handles and positions.
func rawRuleset(t *testing.T, n *testnet.NS, f Family) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := n.Do(func() error {
		conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
		if err != nil {
			return err
		}
		defer conn.Close()
		for _, kind := range []int{unix.NFT_MSG_GETTABLE, unix.NFT_MSG_GETCHAIN, unix.NFT_MSG_GETRULE} {
			req, err := request(kind, netlink.Dump, f.nfproto(), nil)
			if err != nil {
				return err
			}
			msgs, err := conn.Execute(req)
			if err != nil {
				return err
			}
			seen := map[string]int{}
			for _, m := range msgs {
				ad, err := netlink.NewAttributeDecoder(m.Data[4:])
				if err != nil {
					return err
				}
				var table, chain string
				var kept []byte
				for ad.Next() {
					typ := ad.Type()
					switch {
					case kind == unix.NFT_MSG_GETTABLE && typ == unix.NFTA_TABLE_NAME:
						table = ad.String()
					case kind == unix.NFT_MSG_GETTABLE && typ == 4: // NFTA_TABLE_HANDLE
					case kind == unix.NFT_MSG_GETCHAIN && typ == unix.NFTA_CHAIN_TABLE, kind == unix.NFT_MSG_GETRULE && typ == unix.NFTA_RULE_TABLE:
						table = ad.String()
					case kind == unix.NFT_MSG_GETCHAIN && typ == unix.NFTA_CHAIN_NAME, kind == unix.NFT_MSG_GETRULE && typ == unix.NFTA_RULE_CHAIN:
						chain = ad.String()
					case kind == unix.NFT_MSG_GETCHAIN && typ == unix.NFTA_CHAIN_HANDLE,
						kind == unix.NFT_MSG_GETRULE && (typ == unix.NFTA_RULE_HANDLE || typ == unix.NFTA_RULE_POSITION):
					default:
						kept = binary.BigEndian.AppendUint16(kept, typ)
						kept = append(kept, ad.Bytes()...)
					}
				}
				if err := ad.Err(); err != nil {
					return err
				}
				key := table + " " + chain
				if kind == unix.NFT_MSG_GETRULE {
					key = fmt.Sprintf("%s #%d", key, seen[key])
					seen[table+" "+chain]++
				}
				out[key] = kept
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestWriteNFTBigBatch: a pod with many rules (1500 port mappings' worth)
// is written in process in one transaction, every acknowledgement read,
// as iptables-restore writes it. With the default socket buffers the
// transaction does not fit; with a big send buffer only, the kernel
// applied it and then dropped acknowledgements (ENOBUFS) from 150
// mappings on, and the caller, taking that for a failure, would have run
// iptables-restore over it.
func TestWriteNFTBigBatch(t *testing.T) {
	if !NFT(IPv4) {
		t.Skip("iptables here is not iptables-nft")
	}
	var lines []string
	lines = append(lines, ":CNI-DN-big")
	for p := 1; p <= 1500; p++ {
		lines = append(lines, fmt.Sprintf("-A CNI-DN-big -s 10.88.0.0/16 -p tcp -m tcp --dport %d -j MARK --set-xmark 0x2000/0x2000", p),
			fmt.Sprintf("-A CNI-DN-big -p tcp -m tcp --dport %d -j DNAT --to-destination 10.88.0.2:%d", p, p))
	}
	ref, mine := testnet.NewNS(t, "ipt"), testnet.NewNS(t, "nft")
	b := corpusBatch("nat", lines)
	cmd := ref.Command("iptables-restore", "--noflush")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iptables-restore: %v: %s", err, out)
	}
	if err := mine.Do(func() error { return writeNFT(IPv4, []*Batch{b}) }); err != nil {
		t.Fatalf("writeNFT: %v", err)
	}
	if w, g := save(t, ref, IPv4), save(t, mine, IPv4); w != g {
		t.Errorf("iptables-save differs (%d and %d bytes)", len(w), len(g))
	}
}
