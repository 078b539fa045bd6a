package firewall

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"unicode"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/iptables"
)

// FuzzRules: for any pod addresses, bridge name (prevResult.interfaces[0],
// which the ingress policies match on), policy, admin chain, network and
// container ID that load accepts, the iptables rules name only the pod's
// addresses as /32 or /128 and the bridge as one argument, have no line
// break, and keep their shape; the nftables rules encode, compare only the
// pod's addresses, and name the bridge within IFNAMSIZ.
func FuzzRules(f *testing.F) {
	f.Add("10.0.0.2/24|fd00::2/64", "cni0", "isolated", "CNI-ADMIN", "net", "cid")
	f.Add("10.0.0.2/24", "br0 -j ACCEPT -i x", "same-bridge", "", "n", "c")
	f.Add("::ffff:10.0.0.2/64", "br-with-a-very-long-name", "isolated", "A", "n", "c")
	f.Add("10.0.0.2/24", "br\"0", "same-bridge", "X", "n", "c")
	f.Add("10.0.0.2/24", "", "open", "CNI-ADMIN", "n", "c")
	f.Fuzz(func(t *testing.T, ips, bridge, policy, admin, netName, id string) {
		if utils.ValidateNetworkName(netName) != nil || utils.ValidateContainerID(id) != nil {
			return // the CNI core refuses these before firewall runs
		}
		var list []map[string]any
		for _, ip := range strings.Split(ips, "|") {
			list = append(list, map[string]any{"address": ip, "interface": 2})
		}
		conf, _ := json.Marshal(map[string]any{
			"cniVersion": "1.0.0", "name": netName, "type": "firewall", "backend": "iptables",
			"ingressPolicy": policy, "iptablesAdminChainName": admin,
			"prevResult": map[string]any{"cniVersion": "1.0.0",
				"interfaces": []map[string]any{{"name": bridge}, {"name": "veth0"}, {"name": "eth0", "sandbox": "/x"}},
				"ips":        list},
		})
		req := &cni.Request{Command: "ADD", ContainerID: id, IfName: "eth0", Netns: "/x", Config: conf, Name: netName, Version: "1.0.0"}
		a, _, err := load(req, true)
		if err != nil {
			return
		}
		allowed := map[string]bool{}
		for _, p := range a.IPs {
			if p.Bits() != p.Addr().BitLen() {
				t.Fatalf("pod address %v is not a host prefix", p)
			}
			allowed[p.String()] = true
		}
		for _, fam := range a.families() {
			b := iptables.NewBatch("filter")
			planAdd(nil, a, fam, b)
			for _, line := range strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n") {
				toks := strings.Fields(line)
				for i := 1; i < len(toks); i++ {
					if (toks[i-1] == "-s" || toks[i-1] == "-d") && !allowed[toks[i]] {
						t.Fatalf("rule %q names %q (pod: %v)", line, toks[i], a.IPs)
					}
				}
			}
		}
		if a.Policy == policyOpen {
			return
		}
		if utils.ValidateInterfaceName(a.Bridge) != nil || strings.ContainsFunc(a.Bridge, unicode.IsControl) {
			t.Fatalf("accepted bridge name %q", a.Bridge)
		}
		s1, s2 := isolationRules(a.Bridge, a.Policy)
		for _, r := range append(s1, s2...) {
			if strings.ContainsAny(r, "\n\r\x00") {
				t.Fatalf("rule %q", r)
			}
			toks := strings.Fields(r)
			if toks[0] != "-i" && toks[0] != "-o" || toks[1] != a.Bridge {
				t.Fatalf("rule %q does not start with the bridge %q", r, a.Bridge)
			}
		}
		n1, n2 := isolationExprs(a.Bridge, a.Policy)
		for _, r := range append(append(n1, n2...), podExprs(a)...) {
			var meta *expr.Meta
			addrLoad := false
			for _, e := range r {
				if _, err := expr.Marshal(byte(nftables.TableFamilyINet), e); err != nil {
					t.Fatalf("%T does not encode: %v", e, err)
				}
				switch e := e.(type) {
				case *expr.Meta:
					meta, addrLoad = e, false
				case *expr.Ct:
					meta, addrLoad = nil, false
				case *expr.Payload:
					meta, addrLoad = nil, e.Base == expr.PayloadBaseNetworkHeader
				case *expr.Cmp:
					if meta != nil && (meta.Key == expr.MetaKeyIIFNAME || meta.Key == expr.MetaKeyOIFNAME) {
						if len(e.Data) != 16 || string(bytes.TrimRight(e.Data, "\x00")) != a.Bridge {
							t.Fatalf("interface name %q, bridge %q", e.Data, a.Bridge)
						}
					}
					if addrLoad {
						addr, _ := netip.AddrFromSlice(e.Data)
						if !allowed[netip.PrefixFrom(addr, addr.BitLen()).String()] {
							t.Fatalf("nftables rule compares %v (pod: %v)", addr, a.IPs)
						}
					}
				}
			}
		}
	})
}

// TestBridgeNameRefused: the bridge name the ingress policies match on is
// an argument of iptables rules; one that is not an interface name is a
// config error naming the field.
func TestBridgeNameRefused(t *testing.T) {
	for _, name := range []string{"br0 -j ACCEPT", "br-with-a-very-long-name", "br\x01", "a/b"} {
		conf, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "n", "type": "firewall", "backend": "iptables", "ingressPolicy": "isolated",
			"prevResult": map[string]any{"cniVersion": "1.0.0", "interfaces": []map[string]any{{"name": name}}, "ips": []map[string]any{{"address": "10.0.0.2/24"}}}})
		_, _, err := load(&cni.Request{Command: "ADD", ContainerID: "c", IfName: "eth0", Netns: "/x", Config: conf, Name: "n", Version: "1.0.0"}, true)
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "prevResult.interfaces[0].name") {
			t.Errorf("bridge %q: %v", name, err)
		}
	}
}
