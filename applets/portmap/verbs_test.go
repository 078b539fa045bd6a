package portmap_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// prevResult is a bridge-like result with the pod's eth0 at 10.88.0.2 and fd88::2.
const prevResult = `{"cniVersion":"1.0.0","interfaces":[{"name":"cnibr0"},{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/x"}],
 "ips":[{"address":"10.88.0.2/24","gateway":"10.88.0.1","interface":2},{"address":"fd88::2/64","gateway":"fd88::1","interface":2}]}`

func rawConf(version, net, keys, maps string) []byte {
	rc := ""
	if maps != "" {
		rc = fmt.Sprintf(`,"runtimeConfig":{"portMappings":%s}`, maps)
	}
	prev := prevResult
	if net == "net2" {
		// Another network gives the same container other addresses.
		prev = strings.NewReplacer("10.88.0.", "10.89.0.", "fd88::", "fd89::").Replace(prev)
	}
	return []byte(fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"portmap","prevResult":%s%s%s}`, version, net, prev, keys, rc))
}

// podIPv4 is the pod's IPv4 address in rawConf's prevResult of net.
func podIPv4(net string) string {
	if net == "net2" {
		return "10.89.0.2"
	}
	return "10.88.0.2"
}

func env(cmd, id string, extra ...string) []string {
	return append([]string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_IFNAME=eth0", "CNI_NETNS=/run/netns/cnibox-gone", "CNI_PATH=/nonexistent"}, extra...)
}

// TestBadInput: every invalid key is refused with code 7, a message naming
// the field, and nothing written.
func TestBadInput(t *testing.T) {
	r := testnet.NewRuntime(t)
	for _, tc := range []struct{ keys, maps, field string }{
		{"", `[{"hostPort":0,"containerPort":80,"protocol":"tcp"}]`, "portMappings[0].hostPort"},
		{"", `[{"hostPort":80,"containerPort":80},{"hostPort":70000,"containerPort":80}]`, "portMappings[1].hostPort"},
		{"", `[{"hostPort":80,"containerPort":-1}]`, "portMappings[0].containerPort"},
		{"", `[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]`, "portMappings[0].protocol"},
		{"", `[{"hostPort":80,"containerPort":80,"hostIP":"nope"}]`, "portMappings[0].hostIP"},
		{`,"markMasqBit":32`, `[]`, "markMasqBit"},
		{`,"markMasqBit":3,"externalSetMarkChain":"X"`, `[]`, "markMasqBit"},
		{`,"backend":"ebtables"`, `[]`, "backend"},
		{`,"backend":"nftables","externalSetMarkChain":"X"`, `[]`, "backend"},
		{`,"backend":"nftables","conditionsV4":["tcp","flags","syn"]`, `[]`, "conditionsV4"},
		{`,"snat":"yes"`, `[]`, "snat"},
	} {
		out, _, code := r.Exec("portmap", env("ADD", "bad"), rawConf("1.0.0", "bad", tc.keys, tc.maps))
		if code == 0 {
			t.Errorf("%s %s: ADD succeeded", tc.keys, tc.maps)
			continue
		}
		e := testnet.ParseError(t, out)
		if e.Code != 7 || !strings.Contains(e.Msg, tc.field) {
			t.Errorf("%s %s: error %d %q, want code 7 naming %s", tc.keys, tc.maps, e.Code, e.Msg, tc.field)
		}
	}
	if s := rules(t, r); strings.Contains(s, "CNI-") || strings.Contains(s, "cni_hostport") {
		t.Errorf("bad input left rules:\n%s", s)
	}
	// Chained without a prevResult.
	out, _, code := r.Exec("portmap", env("ADD", "c"), []byte(`{"cniVersion":"1.0.0","name":"n","type":"portmap"}`))
	if e := testnet.ParseError(t, out); code == 0 || e.Code != 7 || !strings.Contains(e.Msg, "prevResult") {
		t.Errorf("ADD without prevResult: %d %+v", code, e)
	}
}

// TestDelGCStatus: DEL without the mappings and with the netns gone, GC
// against the valid list, STATUS; both backends, driven raw as a runtime
// with a 1.1.0 config would.
func TestDelGCStatus(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		t.Run(backend, func(t *testing.T) {
			r := testnet.NewRuntime(t)
			keys := backendKey(backend)
			maps := `[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":53,"containerPort":53,"protocol":"udp"}]`
			for _, id := range []string{"pod-a", "pod-b", "pod-c"} {
				for _, net := range []string{"net1", "net2"} {
					if out, errb, code := r.Exec("portmap", env("ADD", id), rawConf("1.1.0", net, keys, maps)); code != 0 {
						t.Fatalf("ADD %s %s: %s %s", net, id, out, errb)
					}
				}
			}
			if out, _, code := r.Exec("portmap", env("CHECK", "pod-a"), rawConf("1.1.0", "net1", keys, maps)); code != 0 {
				t.Fatalf("CHECK: %s", out)
			}
			// A rule changed behind our back (DNAT to another address): CHECK fails.
			tamper(t, r, backend, "net2", "pod-c")
			if out, _, code := r.Exec("portmap", env("CHECK", "pod-c"), rawConf("1.1.0", "net2", keys, maps)); code == 0 {
				t.Fatalf("CHECK passed with a changed rule: %s", out)
			}
			// DEL without portMappings: the rules are found all the same,
			// and only net1's.
			if out, _, code := r.Exec("portmap", env("DEL", "pod-a"), rawConf("1.1.0", "net1", keys, "")); code != 0 {
				t.Fatalf("DEL: %s", out)
			}
			s := rules(t, r)
			if has(s, backend, "net1", "pod-a") || !has(s, backend, "net2", "pod-a") {
				t.Fatalf("DEL of net1/pod-a: wrong rules left:\n%s", s)
			}
			if out, _, code := r.Exec("portmap", env("CHECK", "pod-a"), rawConf("1.1.0", "net1", keys, maps)); code == 0 {
				t.Fatalf("CHECK passed after DEL: %s", out)
			}
			// GC of net1 with pod-b valid: pod-c goes, net2 is untouched.
			gc := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"net1","type":"portmap"%s,"cni.dev/valid-attachments":[{"containerID":"pod-b","ifname":"eth0"}]}`, keys)
			if out, _, code := r.Exec("portmap", []string{"CNI_COMMAND=GC", "CNI_PATH=/nonexistent"}, []byte(gc)); code != 0 {
				t.Fatalf("GC: %s", out)
			}
			s = rules(t, r)
			if !has(s, backend, "net1", "pod-b") || has(s, backend, "net1", "pod-c") || !has(s, backend, "net2", "pod-c") {
				t.Fatalf("GC: wrong rules left:\n%s", s)
			}
			for _, id := range []string{"pod-a", "pod-b", "pod-c"} {
				for _, net := range []string{"net1", "net2"} {
					if out, _, code := r.Exec("portmap", env("DEL", id), rawConf("1.1.0", net, keys, maps)); code != 0 {
						t.Fatalf("DEL %s %s: %s", net, id, out)
					}
				}
			}
			s = rules(t, r)
			for _, id := range []string{"pod-a", "pod-b", "pod-c"} {
				if strings.Contains(s, id) {
					t.Fatalf("rules of %s left after DEL of every pod:\n%s", id, s)
				}
			}
			if strings.Contains(s, "CNI-DN-") {
				t.Fatalf("per-pod chains left after DEL of every pod:\n%s", s)
			}
			status := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"net1","type":"portmap"%s}`, keys)
			if out, _, code := r.Exec("portmap", []string{"CNI_COMMAND=STATUS"}, []byte(status)); code != 0 {
				t.Fatalf("STATUS: %s", out)
			}
		})
	}
	t.Run("no backend", func(t *testing.T) {
		r := testnet.NewRuntime(t)
		status := `{"cniVersion":"1.1.0","name":"n","type":"portmap","backend":"iptables"}`
		out, _, code := r.Exec("portmap", []string{"CNI_COMMAND=STATUS", "PATH=/usr/bin"}, []byte(status))
		if e := testnet.ParseError(t, out); code == 0 || e.Code != 50 {
			t.Fatalf("STATUS without iptables: %d %+v", code, e)
		}
	})
}

// has reports whether the ruleset dump holds rules of net/id: for
// nftables, a DNAT to the pod's address of net with the container ID as
// its comment, as the reference writes it.
func has(dump, backend, net, id string) bool {
	if backend == "nftables" {
		for _, line := range strings.Split(dump, "\n") {
			if strings.Contains(line, fmt.Sprintf(`comment "%s"`, id)) && strings.Contains(line, "dnat to "+podIPv4(net)+":") {
				return true
			}
		}
		return false
	}
	return strings.Contains(dump, dnChain(net, id))
}

// tamper changes the first DNAT rule of net/id: iptables points it at
// 10.88.0.99, nftables adds a match to it (the rule still names the pod,
// so it is still the attachment's).
func tamper(t *testing.T, r *testnet.Runtime, backend, net, id string) {
	t.Helper()
	if backend == "iptables" {
		chain := dnChain(net, id)
		out := r.Node.MustRun("iptables", "-t", "nat", "-S", chain)
		for i, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "-j DNAT") {
				spec := strings.Fields(strings.Replace(line, podIPv4(net)+":", "10.88.0.99:", 1))[2:]
				r.Node.MustRun("iptables", append([]string{"-t", "nat", "-R", chain, fmt.Sprint(i)}, spec...)...)
				return
			}
		}
		t.Fatalf("no DNAT rule in %s:\n%s", chain, out)
	}
	out := r.Node.MustRun("nft", "-a", "list", "chain", "ip", "cni_hostport", "hostports")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, fmt.Sprintf(`comment "%s"`, id)) && strings.Contains(line, "dnat to "+podIPv4(net)+":80") {
			handle := line[strings.LastIndex(line, "# handle ")+len("# handle "):]
			r.Node.MustRun("nft", "replace", "rule", "ip", "cni_hostport", "hostports", "handle", strings.TrimSpace(handle),
				"tcp", "dport", "8080", "ip", "daddr", "!=", "10.88.0.99", "dnat", "to", podIPv4(net)+":80", "comment", fmt.Sprintf(`"%s"`, id))
			return
		}
	}
	t.Fatalf("no rule of %s/%s:\n%s", net, id, out)
}

// TestConcurrent: many ADDs and then DELs at once (different pods, one
// network) on both backends: every one succeeds, the shared jumps exist
// once, and the DELs leave only the shared base chains.
func TestConcurrent(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		t.Run(backend, func(t *testing.T) {
			r := testnet.NewRuntime(t)
			keys := backendKey(backend)
			const n = 12
			run := func(cmd string) {
				var wg sync.WaitGroup
				errs := make(chan string, n)
				for i := 0; i < n; i++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						maps := fmt.Sprintf(`[{"hostPort":%d,"containerPort":80,"protocol":"tcp"}]`, 9000+i)
						if out, errb, code := r.Exec("portmap", env(cmd, fmt.Sprintf("pod-%d", i)), rawConf("1.0.0", "conc", keys, maps)); code != 0 {
							errs <- fmt.Sprintf("%s pod-%d: %s %s", cmd, i, out, errb)
						}
					}()
				}
				wg.Wait()
				close(errs)
				for e := range errs {
					t.Error(e)
				}
			}
			run("ADD")
			s := rules(t, r)
			for i := 0; i < n; i++ {
				if !has(s, backend, "conc", fmt.Sprintf("pod-%d", i)) {
					t.Errorf("rules of pod-%d missing", i)
				}
			}
			if backend == "iptables" {
				s := r.Node.MustRun("iptables-save")
				for _, jump := range []string{"-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT", "-A INPUT -j CNI-HOSTPORT-GUARD",
					`-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ`} {
					if c := strings.Count(s, jump+"\n"); c != 1 {
						t.Errorf("%q %d times", jump, c)
					}
				}
			}
			run("DEL")
			s = rules(t, r)
			if strings.Contains(s, "pod-") || strings.Contains(s, "CNI-DN-") {
				t.Errorf("left after DEL:\n%s", s)
			}
		})
	}
}
