package portmap

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/iptables"
)

func testAttachment() *attachment {
	_, v4, _ := net.ParseCIDR("10.88.0.0/24")
	v4.IP = net.ParseIP("10.88.0.2").To4()
	_, v6, _ := net.ParseCIDR("fd88::/64")
	v6.IP = net.ParseIP("fd88::2")
	return &attachment{net: "net", id: "cid", snat: true, markBit: 13, markJump: setMarkChain, v4: v4, v6: v6,
		maps: []Mapping{{8080, 80, "tcp", ""}, {53, 53, "udp", "192.168.1.1"}, {8443, 443, "tcp", "fd77::1"}, {9000, 90, "sctp", "0.0.0.0"}}}
}

func TestDNRules(t *testing.T) {
	a := testAttachment()
	got := dnRules(a, iptables.IPv4)
	want := []string{
		"-s 10.88.0.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
		"-s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
		"-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80",
		"-s 10.88.0.0/24 -d 192.168.1.1/32 -p udp -m udp --dport 53 -j CNI-HOSTPORT-SETMARK",
		"-s 127.0.0.1/32 -d 192.168.1.1/32 -p udp -m udp --dport 53 -j CNI-HOSTPORT-SETMARK",
		"-d 192.168.1.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.88.0.2:53",
		"-s 10.88.0.0/24 -p sctp -m sctp --dport 9000 -j CNI-HOSTPORT-SETMARK",
		"-s 127.0.0.1/32 -p sctp -m sctp --dport 9000 -j CNI-HOSTPORT-SETMARK",
		"-p sctp -m sctp --dport 9000 -j DNAT --to-destination 10.88.0.2:90",
	}
	if !slices.Equal(got, want) {
		t.Errorf("v4 rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	got = dnRules(a, iptables.IPv6)
	want = []string{
		"-s fd88::/64 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
		"-p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd88::2]:80",
		"-s fd88::/64 -d fd77::1/128 -p tcp -m tcp --dport 8443 -j CNI-HOSTPORT-SETMARK",
		"-d fd77::1/128 -p tcp -m tcp --dport 8443 -j DNAT --to-destination [fd88::2]:443",
	}
	if !slices.Equal(got, want) {
		t.Errorf("v6 rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	a.masqAll, a.markJump = true, "KUBE-MARK-MASQ"
	a.maps = a.maps[:1]
	got = dnRules(a, iptables.IPv4)
	want = []string{"-p tcp -m tcp --dport 8080 -j KUBE-MARK-MASQ", "-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80"}
	if !slices.Equal(got, want) {
		t.Errorf("masqAll rules: %q", got)
	}
	a.snat = false
	if got := dnRules(a, iptables.IPv4); len(got) != 1 {
		t.Errorf("snat=false rules: %q", got)
	}
}

func TestEntryRulesSplitMultiport(t *testing.T) {
	a := testAttachment()
	a.maps = nil
	for p := 1000; p < 1020; p++ {
		a.maps = append(a.maps, Mapping{p, 80, "tcp", ""})
	}
	a.maps = append(a.maps, Mapping{53, 53, "udp", ""})
	a.cond4 = []string{"-s", "10.0.0.0/8"}
	got := entryRules(a, iptables.IPv4)
	if len(got) != 3 {
		t.Fatalf("entry rules: %q", got)
	}
	if !strings.Contains(got[0], "--dports 1000,1001,1002,1003,1004,1005,1006,1007,1008,1009,1010,1011,1012,1013,1014 -s 10.0.0.0/8 -j CNI-DN-") ||
		!strings.Contains(got[1], "--dports 1015,1016,1017,1018,1019 ") || !strings.HasPrefix(got[2], "-p udp ") {
		t.Errorf("entry rules: %q", got)
	}
	if !strings.Contains(got[0], `--comment "dnat name: \"net\" id: \"cid\""`) {
		t.Errorf("entry comment: %q", got[0])
	}
	if !sameEntry("-s 10.0.0.0/8 "+strings.Replace(got[2], " -s 10.0.0.0/8", "", 1), got[2]) {
		t.Errorf("sameEntry does not accept moved conditions")
	}
}

// TestPlanAdd: on an empty table ADD creates the shared chains, appends
// the top-level jumps and prepends the masquerade jump; on a table that has
// them (and an old copy of the pod's rules) it adds no shared rule twice and
// replaces the pod's entry rules.
func TestPlanAdd(t *testing.T) {
	a := testAttachment()
	nat, filter := planAdd(iptables.Dump{}, a, iptables.IPv4)
	s := nat.String() + filter.String()
	for _, want := range []string{
		":CNI-HOSTPORT-SETMARK - [0:0]", ":CNI-HOSTPORT-MASQ - [0:0]", ":CNI-HOSTPORT-DNAT - [0:0]",
		"-I POSTROUTING 1 " + masqJump, "-A PREROUTING " + topJump, "-A OUTPUT " + topJump,
		"-A CNI-HOSTPORT-SETMARK -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark 0x2000/0x2000",
		"-I INPUT 1 -j CNI-HOSTPORT-GUARD", ":" + dnChain("net", "cid") + " - [0:0]",
	} {
		if !strings.Contains(s, want+"\n") {
			t.Errorf("missing %q in\n%s", want, s)
		}
	}
	entry := entryRules(a, iptables.IPv4)[0]
	dump := iptables.ParseDump(`*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:` + dnChain("net", "cid") + ` - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A PREROUTING ` + topJump + `
-A OUTPUT ` + topJump + `
-A POSTROUTING ` + masqJump + `
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNI-HOSTPORT-DNAT ` + entry + `
COMMIT
*filter
:INPUT ACCEPT [0:0]
:CNI-HOSTPORT-GUARD - [0:0]
-A INPUT -j CNI-HOSTPORT-GUARD
-A CNI-HOSTPORT-GUARD ` + guardRule + `
COMMIT
`)
	nat, filter = planAdd(dump, a, iptables.IPv4)
	s = nat.String()
	for _, bad := range []string{"SETMARK - [0:0]", "MASQ - [0:0]", "-A PREROUTING", "-A OUTPUT", "POSTROUTING", "DNAT - [0:0]"} {
		if strings.Contains(s, bad) {
			t.Errorf("second ADD repeats %q:\n%s", bad, s)
		}
	}
	if !strings.Contains(s, "-D CNI-HOSTPORT-DNAT "+entry+"\n") {
		t.Errorf("second ADD does not replace the old entry rule:\n%s", s)
	}
	if !filter.Empty() {
		t.Errorf("guard added twice:\n%s", filter)
	}
	b := planRemove(dump["nat"], []string{dnChain("net", "cid")})
	if b.Empty() {
		t.Fatal("nothing to remove")
	}
	b = planRemove(iptables.ParseDump("*nat\nCOMMIT\n")["nat"], []string{dnChain("net", "cid")})
	if !b.Empty() {
		t.Errorf("removing a missing chain: %s", b)
	}
}

func TestChainName(t *testing.T) {
	// Value computed with the reference's utils.MustFormatChainNameWithPrefix.
	if got := dnChain("net", "cid"); len(got) != 28 || !strings.HasPrefix(got, "CNI-DN-") {
		t.Errorf("chain name %q", got)
	}
}

func TestParseConditions(t *testing.T) {
	for _, ok := range [][]string{
		{"ip saddr 10.0.0.0/8"}, {"ip", "daddr", "!=", "192.168.1.1"}, {`iifname "eth0"`, "oifname != lo"}, nil,
	} {
		if _, err := parseConditions(ok, false); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	if _, err := parseConditions([]string{"ip6 saddr fd00::/8"}, true); err != nil {
		t.Error(err)
	}
	for _, bad := range [][]string{{"ip6 saddr fd00::/8"}, {"tcp flags syn"}, {"ip saddr"}, {"ip saddr 300.1.1.1"}} {
		if _, err := parseConditions(bad, false); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestChooseBackend(t *testing.T) {
	str := func(s string) *string { return &s }
	for _, tc := range []struct {
		conf Config
		want string
	}{
		{Config{ConditionsV4: &[]string{"ip saddr 10.0.0.0/8"}}, "nftables"},
		{Config{ConditionsV4: &[]string{"-s", "10.0.0.0/8"}}, "iptables"},
		{Config{ExternalSetMarkChain: str("K")}, "iptables"},
		{Config{Backend: str("nftables")}, "nftables"},
	} {
		if err := chooseBackend(&tc.conf); err != nil || *tc.conf.Backend != tc.want {
			t.Errorf("%+v: %v %v", tc.conf, *tc.conf.Backend, err)
		}
	}
	if err := chooseBackend(&Config{Backend: str("iptables"), ConditionsV6: &[]string{"ip6 saddr ::1"}}); err == nil {
		t.Error("nft conditions accepted with backend iptables")
	}
}

func TestRestoreArg(t *testing.T) {
	for in, want := range map[string]string{"-s": "-s", "10.0.0.0/8": "10.0.0.0/8", "a b": `"a b"`, `say "hi"`: `"say \"hi\""`, "": `""`} {
		if got := restoreArg(in); got != want {
			t.Errorf("restoreArg(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestDelFamilies: DEL looks only in the families of the pod's known
// addresses, and in both when none is known.
func TestDelFamilies(t *testing.T) {
	for _, c := range []struct {
		pods []string
		want string
	}{
		{nil, "4,6"},
		{[]string{"10.0.0.2"}, "4"},
		{[]string{"::ffff:10.0.0.2"}, "4"},
		{[]string{"fd00::2"}, "6"},
		{[]string{"fd00::2", "10.0.0.2"}, "4,6"},
	} {
		var pods []netip.Addr
		for _, p := range c.pods {
			pods = append(pods, netip.MustParseAddr(p))
		}
		var got []string
		for _, f := range delFamilies(pods) {
			if f == iptables.IPv4 {
				got = append(got, "4")
			} else {
				got = append(got, "6")
			}
		}
		if strings.Join(got, ",") != c.want {
			t.Errorf("pods %v: families %v, want %s", c.pods, got, c.want)
		}
	}
}
