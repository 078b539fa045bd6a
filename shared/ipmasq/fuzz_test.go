package ipmasq

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// FuzzRules: for any pod addresses a result can carry (as bridge and ptp
// get them from IPAM), network name, container ID and interface name, the
// iptables batch names only the pod's addresses, their subnets and
// multicast, with the chain within iptables' 28 characters and the comment
// one argument, and has no stray line; the nftables rules encode, match the
// pod's address as source and its subnet as destination, and their comment
// fits nft's limit without a double quote.
func FuzzRules(f *testing.F) {
	f.Add("10.0.0.2/24|fd00::2/64", "net", "cid", "eth0")
	f.Add("::ffff:10.0.0.2/64", "n", "c", "eth0")
	f.Add("10.0.0.2/0|10.0.0.3/32", "n.a-b_c", strings.Repeat("c", 300), "e\"th0")
	f.Add("0.0.0.0/8", "n", "c", "x")
	f.Fuzz(func(t *testing.T, ips, netName, id, ifName string) {
		if utils.ValidateNetworkName(netName) != nil || utils.ValidateContainerID(id) != nil || utils.ValidateInterfaceName(ifName) != nil {
			return // the CNI core refuses these before any plugin runs
		}
		var list []map[string]any
		for _, ip := range strings.Split(ips, "|") {
			list = append(list, map[string]any{"address": ip})
		}
		data, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "ips": list})
		res, err := current.NewResult(data)
		if err != nil {
			return
		}
		nets := Nets(res.(*current.Result))
		a := Attachment{Network: netName, ContainerID: id, IfName: ifName}
		allowed := map[string]bool{"224.0.0.0/4": true, "ff00::/8": true}
		for _, ipn := range nets {
			allowed[ipn.IP.String()] = true
			allowed[subnet(ipn).String()] = true
		}
		chain := ChainName(netName, id)
		if len(chain) > 28 {
			t.Fatalf("chain %q", chain)
		}
		quoted := 0
		for _, b := range setupBatches(a, nets) {
			for _, line := range strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n") {
				if line == "*nat" || line == "COMMIT" || line == ":"+chain+" - [0:0]" {
					continue
				}
				c := strings.Index(line, " -m comment --comment ")
				if c < 0 {
					t.Fatalf("line %q", line)
				}
				quoted++
				toks := strings.Fields(line[:c])
				if len(toks) < 4 || toks[0] != "-A" || (toks[1] != chain && toks[1] != "POSTROUTING") {
					t.Fatalf("line %q", line)
				}
				if addr := toks[len(toks)-1]; !allowed[addr] || addr == "<nil>" {
					t.Fatalf("line %q names %q (allowed %v)", line, addr, allowed)
				}
				if !strings.HasSuffix(line, " -j ACCEPT") && !strings.HasSuffix(line, " -j MASQUERADE") && !strings.HasSuffix(line, " -j "+chain) {
					t.Fatalf("line %q", line)
				}
			}
		}
		if c := nftComment(a); len(c) > maxCommentLen || strings.Contains(c, `"`) || !strings.HasPrefix(c, hashForInstance(a)) {
			t.Fatalf("nft comment %q", c)
		}
		for _, ipn := range nets {
			ip, _ := netip.AddrFromSlice(ipn.IP)
			ip = ip.Unmap()
			var cmps []netip.Addr
			for _, e := range masqExprs(ipn) {
				if _, err := expr.Marshal(byte(nftables.TableFamilyINet), e); err != nil {
					t.Fatalf("%T does not encode: %v", e, err)
				}
				if c, ok := e.(*expr.Cmp); ok && len(c.Data) > 1 {
					addr, _ := netip.AddrFromSlice(c.Data)
					cmps = append(cmps, addr)
				}
			}
			ones, _ := ipn.Mask.Size()
			want := netip.PrefixFrom(ip, ones).Masked().Addr()
			if len(cmps) != 2 || cmps[0] != ip || cmps[1] != want {
				t.Fatalf("%v: rule compares %v, want %v and %v", ipn, cmps, ip, want)
			}
		}
	})
}

// TestNetsIPv4Mapped: an IPv4-mapped address is its IPv4 address with the
// prefix less 96 bits, or left out when there is no IPv4 subnet to speak of.
func TestNetsIPv4Mapped(t *testing.T) {
	res, err := current.NewResult([]byte(`{"cniVersion":"1.0.0","ips":[{"address":"::ffff:10.0.0.2/120"},{"address":"::ffff:10.0.0.3/64"},{"address":"10.0.0.4/16"},{"address":"fd00::2/64"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range Nets(res.(*current.Result)) {
		got = append(got, n.String())
	}
	if strings.Join(got, " ") != "10.0.0.2/24 10.0.0.4/16 fd00::2/64" {
		t.Errorf("Nets = %v", got)
	}
}
