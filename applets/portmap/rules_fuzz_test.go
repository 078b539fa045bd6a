package portmap

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/containernetworking/cni/pkg/utils"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/iptables"
)

// restoreFields splits a rule as iptables-restore does: on blanks, with
// double quotes grouping and a backslash escaping the next character.
func restoreFields(s string) []string {
	var out []string
	var cur strings.Builder
	in, quoted, esc := false, false, false
	for _, c := range s {
		switch {
		case esc:
			cur.WriteRune(c)
			esc = false
		case c == '\\' && quoted:
			esc = true
		case c == '"':
			quoted, in = !quoted, true
		case (c == ' ' || c == '\t') && !quoted:
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(c)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

// fuzzPortmapConfig is a portmap config with one mapping, conditions split
// on '|', and a prevResult with the pod's addresses.
func fuzzPortmapConfig(backend string, hostPort, containerPort int, proto, hostIP, conds, pod4, pod6 string, snat, masqAll bool) []byte {
	conf := map[string]any{
		"cniVersion": "1.0.0", "name": "n", "type": "portmap", "backend": backend,
		"snat": snat, "masqAll": masqAll,
		"runtimeConfig": map[string]any{"portMappings": []map[string]any{
			{"hostPort": hostPort, "containerPort": containerPort, "protocol": proto, "hostIP": hostIP},
			{"hostPort": 8080, "containerPort": 80},
		}},
	}
	if conds != "" {
		key := "conditionsV4"
		if strings.Contains(conds, "ip6") || strings.HasPrefix(conds, "6") {
			key = "conditionsV6"
		}
		conf[key] = strings.Split(conds, "|")
	}
	var ips []map[string]any
	for _, p := range []string{pod4, pod6} {
		if p != "" {
			ips = append(ips, map[string]any{"address": p, "interface": 0})
		}
	}
	conf["prevResult"] = map[string]any{"cniVersion": "1.0.0",
		"interfaces": []map[string]any{{"name": "eth0", "sandbox": "/x"}}, "ips": ips}
	data, _ := json.Marshal(conf)
	return data
}

// FuzzRules: for any mapping (ports, protocol, host IP), conditions, pod
// addresses, network name and container ID that load accepts, both
// backends' rules only ever name the pod's address and subnet, the mapped
// ports, the host IP, 127.0.0.1 and what the conditions say; the iptables
// text has no line break, keeps each condition one argument and the
// comment one argument, and its chain name fits iptables' 28 characters;
// every nftables expression encodes, and interface names fit IFNAMSIZ.
func FuzzRules(f *testing.F) {
	f.Add("iptables", 8443, 443, "tcp", "192.168.1.1", "-s|10.0.0.0/8", "10.88.0.2/24", "fd88::2/64", "net", "cid", true, false)
	f.Add("nftables", 53, 53, "UDP", "", "ip saddr != 10.0.0.0/8 iifname eth1", "10.88.0.2/16", "", "n-1.x", "c_1", true, true)
	f.Add("nftables", 53, 53, "sctp", "fd77::1", "ip6 daddr fd00::/8|oifname \"eth9\"", "", "fd88::2/64", "n", "c", false, false)
	f.Add("nftables", 1, 65535, "tcp", "::ffff:10.0.0.1", "iifname averyveryverylongname", "10.0.0.2/32", "", "n", "c", true, false)
	f.Add("nftables", 80, 80, "tcp", "", "iifname \"\"", "10.0.0.2/24", "", "n", "c", true, false)
	f.Add("iptables", 80, 80, "tcp", "0.0.0.0", `-m|comment|--comment|a "quoted" \ comment`, "10.0.0.2/24", "", strings.Repeat("n", 200), strings.Repeat("c", 200), true, false)
	f.Fuzz(func(t *testing.T, backend string, hostPort, containerPort int, proto, hostIP, conds, pod4, pod6, netName, id string, snat, masqAll bool) {
		if utils.ValidateNetworkName(netName) != nil || utils.ValidateContainerID(id) != nil {
			return // the CNI core refuses these before portmap runs
		}
		conf := fuzzPortmapConfig(backend, hostPort, containerPort, proto, hostIP, conds, pod4, pod6, snat, masqAll)
		req := &cni.Request{Command: "ADD", ContainerID: id, IfName: "eth0", Netns: "/x", Config: conf, Name: netName, Version: "1.0.0"}
		_, a, _, err := load(req)
		if err != nil {
			return
		}
		allowed := map[string]bool{"127.0.0.1": true, "127.0.0.1/32": true}
		for _, ipn := range []*net.IPNet{a.v4, a.v6} {
			if ipn != nil {
				allowed[ipn.IP.String()] = true
				allowed[(&net.IPNet{IP: ipn.IP.Mask(ipn.Mask), Mask: ipn.Mask}).String()] = true
			}
		}
		ports := map[int]bool{}
		for _, m := range a.maps {
			ports[m.HostPort], ports[m.ContainerPort] = true, true
			if h, ok := m.hostAddr(); ok {
				allowed[h.String()] = true
				allowed[netip.PrefixFrom(h, h.BitLen()).String()] = true
			}
		}
		if *confBackend(t, conf) == backendNFTables {
			checkNFTRules(t, a, allowed, ports)
		} else {
			checkIPTRules(t, a, allowed, ports)
		}
	})
}

func confBackend(t *testing.T, conf []byte) *string {
	var c Config
	if err := json.Unmarshal(conf, &c); err != nil {
		t.Fatal(err)
	}
	if err := chooseBackend(&c); err != nil {
		t.Fatal(err)
	}
	return c.Backend
}

func checkIPTRules(t *testing.T, a *attachment, allowed map[string]bool, ports map[int]bool) {
	t.Helper()
	if c := dnChain(a.net, a.id); len(c) > 28 {
		t.Fatalf("chain %q longer than 28", c)
	}
	for _, f := range a.families() {
		cond := a.cond4
		if f == iptables.IPv6 {
			cond = a.cond6
		}
		for _, r := range entryRules(a, f) {
			if strings.ContainsAny(r, "\n\r\x00") {
				t.Fatalf("entry rule %q", r)
			}
			toks := restoreFields(r)
			// -p P -m comment --comment C -m multiport --dports PORTS COND... -j CHAIN
			if len(toks) != 12+len(cond) || toks[5] != restoreFields(entryComment(a.net, a.id))[0] || toks[len(toks)-1] != dnChain(a.net, a.id) {
				t.Fatalf("entry rule %q: fields %q (conditions %q)", r, toks, cond)
			}
			for i, c := range cond {
				if toks[10+i] != c {
					t.Fatalf("entry rule %q: condition %q became %q", r, c, toks[10+i])
				}
			}
			for _, p := range strings.Split(toks[9], ",") {
				if n, err := strconv.Atoi(p); err != nil || !ports[n] {
					t.Fatalf("entry rule %q: port %q", r, p)
				}
			}
		}
		for _, r := range dnRules(a, f) {
			if strings.ContainsAny(r, "\n\r\x00") {
				t.Fatalf("DN rule %q", r)
			}
			toks := restoreFields(r)
			for i, tok := range toks {
				var prev string
				if i > 0 {
					prev = toks[i-1]
				}
				switch prev {
				case "-s", "-d":
					if !allowed[tok] {
						t.Fatalf("rule %q names address %q (allowed %v)", r, tok, allowed)
					}
				case "--dport":
					if n, err := strconv.Atoi(tok); err != nil || !ports[n] {
						t.Fatalf("rule %q: port %q", r, tok)
					}
				case "--to-destination":
					host, port, err := net.SplitHostPort(tok)
					n, _ := strconv.Atoi(port)
					if err != nil || !allowed[host] || !ports[n] || strings.HasPrefix(host, "127.") {
						t.Fatalf("rule %q: DNAT to %q", r, tok)
					}
				}
			}
		}
		nat, filter := planAdd(iptables.Dump{}, a, f)
		for _, b := range []*iptables.Batch{nat, filter} {
			if b == nil {
				continue
			}
			for _, line := range strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n") {
				if !strings.HasPrefix(line, "-") && !strings.HasPrefix(line, ":") && !strings.HasPrefix(line, "*") && line != "COMMIT" {
					t.Fatalf("batch line %q", line)
				}
			}
		}
	}
}

func checkNFTRules(t *testing.T, a *attachment, allowed map[string]bool, ports map[int]bool) {
	t.Helper()
	for _, f := range a.nftFamilies() {
		conds, err := parseConditions(f.cond, f.v6)
		if err != nil {
			t.Fatalf("conditions of an accepted config: %v", err)
		}
		rules := nftRules(a, f)
		// The conditions go into the hook chains' jump, as the reference's do.
		rules["prerouting"] = [][]expr.Any{conds}
		var condAddrs []netip.Prefix
		toks := strings.Fields(strings.Join(f.cond, " "))
		for _, tok := range toks {
			if p, err := parsePrefix(tok); err == nil {
				condAddrs = append(condAddrs, p.Masked())
			}
		}
		for chain, list := range rules {
			for _, r := range list {
				checkNFTRule(t, f.fam, chain, r, a, allowed, ports, condAddrs)
			}
		}
	}
}

func checkNFTRule(t *testing.T, fam nftables.TableFamily, chain string, r []expr.Any, a *attachment, allowed map[string]bool, ports map[int]bool, condAddrs []netip.Prefix) {
	t.Helper()
	var load expr.Any
	nats := 0
	regs := map[uint32][]byte{}
	for _, e := range r {
		if _, err := expr.Marshal(byte(fam), e); err != nil {
			t.Fatalf("%s: %T does not encode: %v", chain, e, err)
		}
		switch e := e.(type) {
		case *expr.Payload, *expr.Meta, *expr.Ct, *expr.Fib:
			load = e
		case *expr.Immediate:
			regs[e.Register] = e.Data
		case *expr.NAT:
			nats++
			addr, _ := netip.AddrFromSlice(regs[e.RegAddrMin])
			port := int(binary.BigEndian.Uint16(regs[e.RegProtoMin]))
			if !allowed[addr.String()] || addr.IsLoopback() || !ports[port] {
				t.Fatalf("%s: dnat to %v:%d", chain, addr, port)
			}
		case *expr.Cmp:
			switch l := load.(type) {
			case *expr.Payload:
				if l.Base == expr.PayloadBaseTransportHeader {
					if n := int(binary.BigEndian.Uint16(e.Data)); !ports[n] {
						t.Fatalf("%s: port %d", chain, n)
					}
					continue
				}
				addr, ok := netip.AddrFromSlice(e.Data)
				if !ok {
					t.Fatalf("%s: compares %d bytes of the network header", chain, len(e.Data))
				}
				if allowed[addr.String()] || anyMasked(addr, condAddrs) || maskedPod(addr, a) {
					continue
				}
				t.Fatalf("%s: names address %v (allowed %v, conditions %v)", chain, addr, allowed, condAddrs)
			case *expr.Meta:
				if l.Key == expr.MetaKeyIIFNAME || l.Key == expr.MetaKeyOIFNAME {
					name := string(bytes.TrimRight(e.Data, "\x00"))
					if len(e.Data) != 16 || utils.ValidateInterfaceName(name) != nil || strings.ContainsFunc(name, unicode.IsControl) {
						t.Fatalf("%s: interface name %q", chain, e.Data)
					}
				}
			}
		}
	}
	if chain == nftHostports && nats != 1 {
		t.Fatalf("%s: %d NAT statements", chain, nats)
	}
}

func anyMasked(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Addr() == a {
			return true
		}
	}
	return false
}

// maskedPod: the pod's subnet as the masquerade rule's source.
func maskedPod(a netip.Addr, at *attachment) bool {
	for _, f := range at.nftFamilies() {
		if f.pod == a {
			return true
		}
	}
	return false
}

// TestConditionInterfaceNames: an nftables condition's interface name is
// compared as IFNAMSIZ bytes; one that is not an interface name (too long,
// empty, a wildcard cnibox does not implement) is refused.
func TestConditionInterfaceNames(t *testing.T) {
	if _, err := parseConditions([]string{"iifname eth0", `oifname "br-1"`}, false); err != nil {
		t.Errorf("valid names: %v", err)
	}
	for _, c := range []string{"iifname averyveryverylongname", `iifname ""`, "oifname eth*", "iifname a/b", "iifname \x01"} {
		if _, err := parseConditions([]string{c}, false); err == nil {
			t.Errorf("%q accepted", c)
		}
	}
}
