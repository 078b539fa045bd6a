package ipmasq

import (
	"net"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// The names must be the reference's, byte for byte, so that either
// implementation can clean up after the other (expected values computed
// with Python's hashlib as the reference computes them: hex sha512).
func TestNamesMatchReference(t *testing.T) {
	for _, c := range [][3]string{{"net", "c1", "CNI-623e1c388032b20529218ecc"}, {"a.b_c-d", "x", "CNI-a54fb16c0b7ea0c32c852de5"}} {
		if got := ChainName(c[0], c[1]); got != c[2] {
			t.Errorf("ChainName(%q, %q) = %s, want %s", c[0], c[1], got, c[2])
		}
	}
	if got := Comment("net", "c1"); got != `name: "net" id: "c1"` {
		t.Errorf("Comment = %s", got)
	}
	a := Attachment{Network: "mynet", ContainerID: "abc", IfName: "eth0"}
	if got, want := nftComment(a), "d23676b4f2d9fe04-e65086f8a75535c6, net: mynet, if: eth0, id: abc"; got != want {
		t.Errorf("nft comment = %q, want %q", got, want)
	}
	long := nftComment(Attachment{Network: "n", ContainerID: strings.Repeat("x", 200), IfName: "eth0"})
	if len(long) != maxCommentLen {
		t.Errorf("long comment has %d bytes", len(long))
	}
}

// TestCommentParse: GC reads iptables-save's quoting of the comment back.
func TestCommentParse(t *testing.T) {
	line := `-A POSTROUTING -s 10.1.0.2/32 -m comment --comment "name: \"my.net\" id: \"c-1\"" -j ` + ChainName("my.net", "c-1")
	m := commentRE().FindStringSubmatch(line)
	if m == nil || m[1] != "my.net" || m[2] != "c-1" {
		t.Fatalf("parsed %q", m)
	}
	if !jumpsTo(line, ChainName("my.net", "c-1")) || jumpsTo(line, ChainName("my.net", "c-2")) {
		t.Error("jumpsTo")
	}
}

// TestBackends sets up, checks, garbage-collects and tears down real rules
// of both backends in a throwaway netns, IPv4 and IPv6.
// ips parses CIDRs, keeping each address (not the network's).
func ips(s ...string) []*net.IPNet {
	var out []*net.IPNet
	for _, x := range s {
		ip, n, _ := net.ParseCIDR(x)
		n.IP = ip
		out = append(out, n)
	}
	return out
}

func TestBackends(t *testing.T) {
	for _, backend := range []string{IPTables, NFTables} {
		t.Run(backend, func(t *testing.T) {
			node := testnet.NewNS(t, "node")
			a1 := Attachment{Network: "mnet", ContainerID: "c1", IfName: "eth0"}
			a2 := Attachment{Network: "mnet", ContainerID: "c2", IfName: "eth0"}
			other := Attachment{Network: "othernet", ContainerID: "c3", IfName: "eth0"}
			err := node.Do(func() error {
				for _, x := range []struct {
					a   Attachment
					ips []*net.IPNet
				}{{a1, ips("10.1.0.2/24", "fd00::2/64")}, {a2, ips("10.1.0.3/24")}, {other, ips("10.2.0.2/24")}} {
					if err := Setup(backend, x.a, x.ips); err != nil {
						return err
					}
					if err := Check(backend, x.a, x.ips); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			dump := func() string {
				if backend == IPTables {
					return node.MustRun("iptables-save", "-t", "nat") + node.MustRun("ip6tables-save", "-t", "nat")
				}
				return node.MustRun("nft", "list", "ruleset")
			}
			d := dump()
			if backend == IPTables {
				if n := strings.Count(d, "-A POSTROUTING"); n != 4 {
					t.Errorf("%d POSTROUTING rules, want 4:\n%s", n, d)
				}
				if !strings.Contains(d, "-A "+ChainName("mnet", "c1")+" ! -d ff00::/8") {
					t.Errorf("no IPv6 masquerade rule:\n%s", d)
				}
			} else {
				for _, want := range []string{"ip saddr 10.1.0.2 ip daddr != 10.1.0.0/24 masquerade", "ip6 saddr fd00::2 ip6 daddr != fd00::/64 masquerade",
					"ip daddr 224.0.0.0/4 return", "goto masq_checks",
					// The reference's comments on the table and masq_checks.
					`comment "Masquerading for plugins from github.com/containernetworking/plugins"`,
					`comment "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet"`} {
					if !strings.Contains(d, want) {
						t.Errorf("ruleset lacks %q:\n%s", want, d)
					}
				}
				if n := strings.Count(d, " masquerade comment"); n != 4 {
					t.Errorf("%d masquerade rules, want 4:\n%s", n, d)
				}
			}
			// GC of mnet with only c1 valid removes c2's rules, not othernet's.
			err = node.Do(func() error {
				return GC("mnet", map[cni.Attachment]bool{{ContainerID: "c1", IfName: "eth0"}: true})
			})
			if err != nil {
				t.Fatal(err)
			}
			d = dump()
			if strings.Contains(d, `"c2"`) || strings.Contains(d, "id: c2") {
				t.Errorf("GC left c2's rules:\n%s", d)
			}
			if !strings.Contains(d, "c1") || !strings.Contains(d, "c3") {
				t.Errorf("GC removed valid or foreign rules:\n%s", d)
			}
			err = node.Do(func() error {
				if err := Check(backend, a2, ips("10.1.0.3/24")); err == nil {
					t.Error("Check passed after GC removed the rules")
				}
				// A repeated ADD (which the spec forbids without a DEL between)
				// may leave a second jump; teardown removes both.
				if err := Setup(backend, a1, ips("10.1.0.2/24", "fd00::2/64")); err != nil {
					return err
				}
				// With the addresses (fast path), without, and again.
				for _, x := range []struct {
					a   Attachment
					ips []*net.IPNet
				}{{a1, ips("10.1.0.2/24", "fd00::2/64")}, {a2, nil}, {other, ips("10.2.0.2/24")}, {a1, ips("10.1.0.2/24")}, {a1, nil}} {
					if err := Teardown(x.a, x.ips); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			d = dump()
			if strings.Contains(d, "CNI-") || strings.Contains(d, " masquerade comment") {
				t.Errorf("left after teardown:\n%s", d)
			}
		})
	}
}
