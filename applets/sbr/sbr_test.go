package sbr_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// node makes a runtime whose node has a veth up0/up1: up0 is the macvlan
// master, up1 holds the pod network's gateway 10.40.0.1/24 and the node
// has 10.99.0.1 on lo, an address beyond the gateway.
func node(t *testing.T) *testnet.Runtime {
	t.Helper()
	r := testnet.NewRuntime(t)
	r.Node.MustRun("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
	r.Node.MustRun("ip", "addr", "add", "10.40.0.1/24", "dev", "up1")
	r.Node.MustRun("ip", "addr", "add", "fd00:40::1/64", "dev", "up1", "nodad")
	r.Node.MustRun("ip", "addr", "add", "10.99.0.1/32", "dev", "lo")
	r.Node.MustRun("ip", "link", "set", "up0", "up")
	r.Node.MustRun("ip", "link", "set", "up1", "up")
	return r
}

var netSeq int

func conflist(t *testing.T, r *testnet.Runtime, version string, plugins ...string) *libcni.NetworkConfigList {
	t.Helper()
	netSeq++
	return r.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":"sbr%d","plugins":[%s]}`, version, netSeq, strings.Join(plugins, ",")))
}

const macvlan = `{"type":"macvlan","master":"up0","ipam":{"type":"host-local","ranges":[[{"subnet":"10.40.0.0/24","gateway":"10.40.0.1"}]],"routes":[{"dst":"0.0.0.0/0"}]}}`

const macvlanDual = `{"type":"macvlan","master":"up0","ipam":{"type":"host-local",` +
	`"ranges":[[{"subnet":"10.40.0.0/24","gateway":"10.40.0.1"}],[{"subnet":"fd00:40::/64","gateway":"fd00:40::1"}]],` +
	`"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}}`

func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func ips(t *testing.T, res types.Result) []string {
	t.Helper()
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ip := range cur.IPs {
		out = append(out, ip.Address.IP.String())
	}
	return out
}

// rulesFor returns the "ip rule" lines that name src.
func rulesFor(t *testing.T, pod *testnet.NS, src string) []string {
	var out []string
	for _, fam := range []string{"-4", "-6"} {
		for _, l := range strings.Split(pod.MustRun("ip", fam, "rule", "show"), "\n") {
			if strings.Contains(l, "from "+src+" ") {
				out = append(out, strings.TrimSpace(l))
			}
		}
	}
	return out
}

// TestMacvlanChain is the field's chain, macvlan + sbr, at every spec
// version: the address gets a rule to table 100 holding the interface's
// routes and a default route via its gateway; the main table loses them,
// so the pod reaches beyond the gateway only from that address. CHECK
// passes; DEL removes the rule and table 100.
func TestMacvlanChain(t *testing.T) {
	r := node(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		l := conflist(t, r, v, macvlan, `{"type":"sbr"}`)
		pod := r.Pod(t)
		a := r.Attach(pod, "net1")
		res, err := r.Add(l, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		addr := ips(t, res)[0]
		if got := rulesFor(t, pod, addr); len(got) != 1 || !strings.HasSuffix(got[0], "lookup 100") {
			t.Errorf("rules from %s: %q, want one to table 100", addr, got)
		}
		table := pod.MustRun("ip", "route", "show", "table", "100")
		if !strings.Contains(table, "default via 10.40.0.1 dev net1") || !strings.Contains(table, "10.40.0.0/24 dev net1") {
			t.Errorf("table 100:\n%s", table)
		}
		if main := pod.MustRun("ip", "route", "show", "table", "main"); strings.Contains(main, "net1") {
			t.Errorf("main table still routes through net1:\n%s", main)
		}
		if _, err := pod.Run("ping", "-c1", "-W2", "-I", addr, "10.99.0.1"); err != nil {
			t.Errorf("no way out from %s: %v", addr, err)
		}
		if err := pod.Ping("10.99.0.1"); err == nil {
			t.Error("the main table still has a way out")
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := r.Check(l, a); err != nil {
				t.Errorf("CHECK: %v", err)
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := r.Status(l); err != nil {
				t.Errorf("STATUS: %v", err)
			}
			if err := r.GC(l, a); err != nil {
				t.Errorf("GC: %v", err)
			}
		}
		for i := 0; i < 2; i++ {
			if err := r.Del(l, a); err != nil {
				t.Fatalf("DEL #%d: %v", i+1, err)
			}
		}
		if got := rulesFor(t, pod, addr); len(got) != 0 {
			t.Errorf("rules left: %q", got)
		}
		if table := pod.MustRun("ip", "route", "show", "table", "100"); strings.TrimSpace(table) != "" {
			t.Errorf("table 100 left:\n%s", table)
		}
	})
}

// TestDualStack: each address gets a table of its own (100, 101), in
// prevResult's order; CHECK fails once a rule is gone; DEL of sbr alone
// (the link stays) removes both rules and both tables' routes.
func TestDualStack(t *testing.T) {
	r := node(t)
	l := conflist(t, r, "1.1.0", macvlanDual, `{"type":"sbr"}`)
	pod := r.Pod(t)
	a := r.Attach(pod, "net1")
	res, err := r.Add(l, a)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	addrs := ips(t, res)
	for i, addr := range addrs {
		want := fmt.Sprintf("lookup %d", 100+i)
		if got := rulesFor(t, pod, addr); len(got) != 1 || !strings.HasSuffix(got[0], want) {
			t.Errorf("rules from %s: %q, want %s", addr, got, want)
		}
	}
	if t6 := pod.MustRun("ip", "-6", "route", "show", "table", "101"); !strings.Contains(t6, "default via fd00:40::1 dev net1") {
		t.Errorf("table 101:\n%s", t6)
	}
	if _, err := pod.Run("ping", "-6", "-c1", "-W2", "-I", addrs[1], "fd00:40::1"); err != nil {
		t.Errorf("IPv6 from %s: %v", addrs[1], err)
	}
	if err := r.Check(l, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	pod.MustRun("ip", "-6", "rule", "del", "from", addrs[1], "lookup", "101")
	// macvlan's CHECK, first in the chain, no longer finds ::/0 either.
	if err := r.Check(l, a); err == nil {
		t.Error("CHECK passes without the IPv6 rule")
	}
	sbrOnly := conflist(t, r, "1.1.0", `{"type":"sbr"}`)
	stdin := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"type":"sbr","prevResult":%s}`, sbrOnly.Name, resultJSON(t, res))
	env := []string{"CNI_CONTAINERID=" + a.ContainerID, "CNI_IFNAME=net1", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.BinDir}
	if out, _, code := r.Exec("sbr", append(env, "CNI_COMMAND=CHECK"), []byte(stdin)); code == 0 || !strings.Contains(string(out), addrs[1]) {
		t.Errorf("sbr CHECK without the IPv6 rule: %s", out)
	}
	pod.MustRun("ip", "-6", "rule", "add", "from", addrs[1], "lookup", "101")
	if out, _, code := r.Exec("sbr", append(env, "CNI_COMMAND=CHECK"), []byte(stdin)); code != 0 {
		t.Errorf("sbr CHECK: %s", out)
	}
	if out, stderr, code := r.Exec("sbr", append(env, "CNI_COMMAND=DEL"), []byte(stdin)); code != 0 {
		t.Fatalf("sbr DEL: %s %s", out, stderr)
	}
	for _, addr := range addrs {
		if got := rulesFor(t, pod, addr); len(got) != 0 {
			t.Errorf("rules left: %q", got)
		}
	}
	for _, tbl := range []string{"100", "101"} {
		// A family without the table at all is fine ("FIB table does not exist").
		out6, _ := pod.Run("ip", "-6", "route", "show", "table", tbl)
		out4, _ := pod.Run("ip", "-4", "route", "show", "table", tbl)
		if out := out6 + out4; strings.Contains(out, "net1") {
			t.Errorf("table %s left:\n%s", tbl, out)
		}
	}
	if err := r.Del(l, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

func resultJSON(t *testing.T, res types.Result) string {
	b, err := cni.MarshalResultJSON(res, "1.1.0")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestTable: with "table", sbr adds only the rule to that table and moves
// no route; DEL removes that rule and leaves the user's table alone.
func TestTable(t *testing.T) {
	r := node(t)
	l := conflist(t, r, "1.0.0", macvlan, `{"type":"sbr","table":500}`)
	pod := r.Pod(t)
	pod.MustRun("ip", "route", "add", "10.99.0.1/32", "via", "10.40.0.1", "table", "500", "dev", "lo", "onlink")
	a := r.Attach(pod, "net1")
	res, err := r.Add(l, a)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	addr := ips(t, res)[0]
	if got := rulesFor(t, pod, addr); len(got) != 1 || !strings.HasSuffix(got[0], "lookup 500") {
		t.Errorf("rules from %s: %q, want one to table 500", addr, got)
	}
	if main := pod.MustRun("ip", "route", "show", "table", "main"); !strings.Contains(main, "default via 10.40.0.1 dev net1") {
		t.Errorf("main table lost its routes:\n%s", main)
	}
	if err := r.Check(l, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := r.Del(l, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if got := rulesFor(t, pod, addr); len(got) != 0 {
		t.Errorf("rules left: %q", got)
	}
	if tbl := pod.MustRun("ip", "route", "show", "table", "500"); !strings.Contains(tbl, "10.99.0.1") {
		t.Errorf("the user's table 500 was emptied:\n%s", tbl)
	}
}

// TestTwoInterfaces: a second attachment with sbr in the same pod takes
// the next free table, and DEL of one leaves the other's rule and table.
func TestTwoInterfaces(t *testing.T) {
	r := node(t)
	l := conflist(t, r, "1.1.0", macvlan, `{"type":"sbr"}`)
	pod := r.Pod(t)
	a, b := r.Attach(pod, "net1"), r.Attach(pod, "net2")
	resA, err := r.Add(l, a)
	if err != nil {
		t.Fatalf("ADD a: %v", err)
	}
	resB, err := r.Add(l, b)
	if err != nil {
		t.Fatalf("ADD b: %v", err)
	}
	ipA, ipB := ips(t, resA)[0], ips(t, resB)[0]
	if got := rulesFor(t, pod, ipB); len(got) != 1 || !strings.HasSuffix(got[0], "lookup 101") {
		t.Errorf("second attachment's rules: %q, want table 101", got)
	}
	if err := r.Del(l, a); err != nil {
		t.Fatalf("DEL a: %v", err)
	}
	if got := rulesFor(t, pod, ipA); len(got) != 0 {
		t.Errorf("a's rules left: %q", got)
	}
	if got := rulesFor(t, pod, ipB); len(got) != 1 {
		t.Errorf("b's rule is gone: %q", got)
	}
	if tbl := pod.MustRun("ip", "route", "show", "table", "101"); !strings.Contains(tbl, "default via 10.40.0.1 dev net2") {
		t.Errorf("b's table:\n%s", tbl)
	}
	if err := r.Check(l, b); err != nil {
		t.Errorf("CHECK b: %v", err)
	}
	if err := r.Del(l, b); err != nil {
		t.Fatalf("DEL b: %v", err)
	}
}

// TestBridgeTuningChain: bridge + tuning + sbr, the third field chain: the
// pod's address routes by its own table through the bridge's gateway.
func TestBridgeTuningChain(t *testing.T) {
	r := testnet.NewRuntime(t)
	r.Node.MustRun("ip", "addr", "add", "10.99.0.1/32", "dev", "lo")
	l := conflist(t, r, "1.1.0",
		`{"type":"bridge","bridge":"cbx-sbr","isGateway":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.41.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}}`,
		fmt.Sprintf(`{"type":"tuning","dataDir":%q,"mtu":1400,"sysctl":{"net.ipv4.conf.IFNAME.arp_ignore":"1"}}`, t.TempDir()),
		`{"type":"sbr"}`)
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	res, err := r.Add(l, a)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	addr := ips(t, res)[0]
	if got := rulesFor(t, pod, addr); len(got) != 1 || !strings.HasSuffix(got[0], "lookup 100") {
		t.Errorf("rules: %q", got)
	}
	if _, err := pod.Run("ping", "-c1", "-W2", "-I", addr, "10.99.0.1"); err != nil {
		t.Errorf("no way out from %s: %v", addr, err)
	}
	if err := r.Check(l, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := r.Del(l, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if got := rulesFor(t, pod, addr); len(got) != 0 {
		t.Errorf("rules left: %q", got)
	}
}

// TestErrors: ADD without prevResult is a config error; DEL of a pod whose
// netns is gone, or without a netns, succeeds; a netns path that does not
// exist is not created by the lock.
func TestErrors(t *testing.T) {
	r := node(t)
	pod := r.Pod(t)
	env := func(cmd, netns string) []string {
		return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=c1", "CNI_IFNAME=net1", "CNI_NETNS=" + netns, "CNI_PATH=" + r.BinDir}
	}
	out, _, code := r.Exec("sbr", env("ADD", pod.Path), []byte(`{"cniVersion":"1.0.0","name":"n","type":"sbr"}`))
	if e := testnet.ParseError(t, out); code == 0 || e.Code != cni.ErrInvalidConfig || !strings.Contains(e.Msg, "prevResult") {
		t.Errorf("ADD without prevResult: %s", out)
	}
	out, _, code = r.Exec("sbr", env("ADD", pod.Path), []byte(`{"cniVersion":"1.0.0","name":"n","type":"sbr","table":-3,"prevResult":{"ips":[{"address":"10.1.0.2/24"}]}}`))
	if e := testnet.ParseError(t, out); code == 0 || e.Code != cni.ErrInvalidConfig || !strings.Contains(e.Msg, "table") {
		t.Errorf("negative table: %s", out)
	}
	gone := "/run/netns/cnibox-sbr-no-such-netns"
	for _, ns := range []string{gone, ""} {
		if out, _, code := r.Exec("sbr", env("DEL", ns), []byte(`{"cniVersion":"1.0.0","name":"n","type":"sbr"}`)); code != 0 {
			t.Errorf("DEL with netns %q: %s", ns, out)
		}
	}
	if _, err := r.Node.Run("test", "-e", gone); err == nil {
		t.Errorf("DEL created %s", gone)
	}
	l := conflist(t, r, "1.0.0", macvlan, `{"type":"sbr"}`)
	a := r.Attach(pod, "net1")
	if _, err := r.Add(l, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	pod.Delete()
	if err := r.Del(l, a); err != nil {
		t.Errorf("DEL with the netns gone: %v", err)
	}
	if cniCode(nil) != 0 {
		t.Fatal("cniCode")
	}
}
