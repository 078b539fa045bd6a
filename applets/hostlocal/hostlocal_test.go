package hostlocal_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// network is a host-local network for one test: a conflist with
// host-local as its only plugin and a dataDir of its own.
type network struct {
	name, version, dataDir string
	// anyMode: the reference (v1.1.1 in Debian) writes 0644; only ours must be 0600.
	anyMode bool
}

func newNetwork(t *testing.T, version string) *network {
	return &network{
		name:    "hl-" + strings.ReplaceAll(version, ".", ""),
		version: version,
		dataDir: filepath.Join(t.TempDir(), "networks"),
	}
}

// conflist returns the conflist with ipam (without its braces) as the
// ipam object's keys, plus dataDir and type.
func (n *network) conflist(ipam string, extra ...string) string {
	plugin := fmt.Sprintf(`{"type":"host-local","ipam":{"type":"host-local","dataDir":%q,%s}`, n.dataDir, ipam)
	for _, e := range extra {
		plugin += "," + e
	}
	plugin += "}"
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[%s]}`, n.version, n.name, plugin)
}

// conf is the single-plugin network configuration (stdin of an exec).
func (n *network) conf(ipam string, extra ...string) []byte {
	c := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"host-local","ipam":{"type":"host-local","dataDir":%q,%s}`, n.version, n.name, n.dataDir, ipam)
	for _, e := range extra {
		c += "," + e
	}
	return []byte(c + "}")
}

func (n *network) dir() string { return filepath.Join(n.dataDir, n.name) }

// files returns the reservation files of the network: name → content.
func (n *network) files(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, err := os.ReadDir(n.dir())
	if os.IsNotExist(err) {
		return out
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == "lock" || strings.HasPrefix(e.Name(), "last_reserved_ip.") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(n.dir(), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		info, _ := e.Info()
		if info.Mode().Perm() != 0o600 && !n.anyMode {
			t.Errorf("%s has mode %v, want 0600", e.Name(), info.Mode().Perm())
		}
		out[e.Name()] = string(data)
	}
	return out
}

func addresses(t *testing.T, res types.Result) []string {
	t.Helper()
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ip := range cur.IPs {
		out = append(out, ip.Address.String()+" gw "+ip.Gateway.String())
	}
	return out
}

func wantFiles(t *testing.T, n *network, want map[string]string) {
	t.Helper()
	got := n.files(t)
	if len(got) != len(want) {
		t.Fatalf("reservations = %q, want %q", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("reservations = %q, want %q", got, want)
		}
	}
}

// TestLibcni drives host-local through libcni at every version: dual-stack
// range sets, routes and resolvConf; ADD, a second attachment, a repeated
// ADD, CHECK, DEL, a repeated DEL, STATUS and GC.
func TestLibcni(t *testing.T) {
	r := testnet.NewRuntime(t)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(resolv, []byte("# c\nnameserver 10.9.0.53\nnameserver fd00::53\ndomain example.org\nsearch a.example b.example\noptions ndots:2 timeout:1\n"), 0o644)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		n := newNetwork(t, v)
		list := r.Conflist(n.conflist(fmt.Sprintf(`"ranges":[[{"subnet":"10.10.0.0/29"}],[{"subnet":"fd00:10::/124","gateway":"fd00:10::f"}]],
			"routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.10.0.1"}],"resolvConf":%q`, resolv)))
		pod := r.Pod(t)
		a := r.Attach(pod, "eth0")
		res, err := r.Add(list, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		if got, want := addresses(t, res), []string{"10.10.0.2/29 gw 10.10.0.1", "fd00:10::1/124 gw fd00:10::f"}; !slices.Equal(got, want) {
			t.Fatalf("ADD addresses = %q, want %q", got, want)
		}
		cur, _ := current.NewResultFromResult(res)
		if len(cur.Routes) != 2 || cur.Routes[1].GW.String() != "10.10.0.1" {
			t.Errorf("routes = %v", cur.Routes)
		}
		if !slices.Equal(cur.DNS.Nameservers, []string{"10.9.0.53", "fd00::53"}) || cur.DNS.Domain != "example.org" ||
			!slices.Equal(cur.DNS.Search, []string{"a.example", "b.example"}) || !slices.Equal(cur.DNS.Options, []string{"ndots:2", "timeout:1"}) {
			t.Errorf("dns = %+v", cur.DNS)
		}
		own := a.ContainerID + "\r\neth0"
		wantFiles(t, n, map[string]string{"10.10.0.2": own, "fd00:10::1": own})
		if got, _ := os.ReadFile(filepath.Join(n.dir(), "last_reserved_ip.0")); string(got) != "10.10.0.2" {
			t.Errorf("last_reserved_ip.0 = %q", got)
		}

		b := r.Attach(r.Pod(t), "eth0")
		res, err = r.Add(list, b)
		if err != nil {
			t.Fatalf("second ADD: %v", err)
		}
		if got := addresses(t, res); got[0] != "10.10.0.3/29 gw 10.10.0.1" || got[1] != "fd00:10::2/124 gw fd00:10::f" {
			t.Fatalf("second ADD addresses = %q", got)
		}
		if _, err := r.Add(list, a); err == nil || !strings.Contains(err.Error(), "duplicate allocation") {
			t.Fatalf("repeated ADD: err = %v, want duplicate allocation", err)
		}
		if len(n.files(t)) != 4 {
			t.Fatalf("repeated ADD changed the store: %q", n.files(t))
		}

		if cni.VersionAtLeast(v, "0.4.0") {
			if err := r.Check(list, a); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			os.Remove(filepath.Join(n.dir(), "fd00:10::1"))
			if err := r.Check(list, a); err == nil {
				t.Fatal("CHECK passed with a reservation gone")
			}
			os.WriteFile(filepath.Join(n.dir(), "fd00:10::1"), []byte(own), 0o600)
		}
		if err := r.Del(list, a); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		ownB := b.ContainerID + "\r\neth0"
		wantFiles(t, n, map[string]string{"10.10.0.3": ownB, "fd00:10::2": ownB})
		if err := r.Del(list, a); err != nil {
			t.Fatalf("repeated DEL: %v", err)
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := r.Status(list); err != nil {
				t.Fatalf("STATUS: %v", err)
			}
			if err := r.GC(list, b); err != nil {
				t.Fatalf("GC: %v", err)
			}
			wantFiles(t, n, map[string]string{"10.10.0.3": ownB, "fd00:10::2": ownB})
			if err := r.GC(list); err != nil {
				t.Fatalf("GC: %v", err)
			}
			wantFiles(t, n, nil)
		}
		if err := r.Del(list, b); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		wantFiles(t, n, nil)
	})
}

// TestCnitool drives host-local through the reference cnitool at every
// version, with requested addresses from CNI_ARGS and the ips capability.
func TestCnitool(t *testing.T) {
	r := testnet.NewRuntime(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		n := newNetwork(t, v)
		r.Conflist(n.conflist(`"subnet":"10.20.0.0/24","gateway":"10.20.0.254","routes":[{"dst":"10.30.0.0/16"}]`, `"capabilities":{"ips":true}`))
		pod := r.Pod(t)
		id := testnet.CnitoolContainerID(pod.Path)
		out, err := r.Cnitool("add", n.name, pod, "CNI_IFNAME=eth0", "CNI_ARGS=IP=10.20.0.77")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "10.20.0.77/24") || !strings.Contains(out, "10.20.0.254") || !strings.Contains(out, "10.30.0.0/16") {
			t.Fatalf("ADD result: %s", out)
		}
		wantFiles(t, n, map[string]string{"10.20.0.77": id + "\r\neth0"})
		if cni.VersionAtLeast(v, "0.4.0") {
			if _, err := r.Cnitool("check", n.name, pod, "CNI_IFNAME=eth0"); err != nil {
				t.Fatal(err)
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if _, err := r.Cnitool("status", n.name, nil); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.Cnitool("del", n.name, pod, "CNI_IFNAME=eth0"); err != nil {
			t.Fatal(err)
		}
		wantFiles(t, n, nil)

		pod2 := r.Pod(t)
		out, err = r.Cnitool("add", n.name, pod2, "CNI_IFNAME=net1", `CAP_ARGS={"ips":["10.20.0.9/24"]}`)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "10.20.0.9/24") {
			t.Fatalf("ADD with the ips capability: %s", out)
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			// cnitool's gc lists no valid attachment: everything goes.
			if _, err := r.Cnitool("gc", n.name, nil); err != nil {
				t.Fatal(err)
			}
			wantFiles(t, n, nil)
		}
		if _, err := r.Cnitool("del", n.name, pod2, "CNI_IFNAME=net1"); err != nil {
			t.Fatal(err)
		}
		wantFiles(t, n, nil)
	})
}

// TestRequestedIPs covers runtimeConfig.ips, args.cni.ips and CNI_ARGS IP=
// through libcni: one per range set, a taken one refused, one outside every
// set refused naming its field, and nothing left behind by a failed ADD.
func TestRequestedIPs(t *testing.T) {
	r := testnet.NewRuntime(t)
	n := newNetwork(t, "1.1.0")
	ipam := `"ranges":[[{"subnet":"10.40.0.0/24"}],[{"subnet":"fd00:40::/64"}]]`
	list := r.Conflist(n.conflist(ipam, `"capabilities":{"ips":true}`))
	a := r.Attach(r.Pod(t), "eth0")
	a.Caps = map[string]any{"ips": []string{"10.40.0.50/24", "fd00:40::50/64"}}
	res, err := r.Add(list, a)
	if err != nil {
		t.Fatal(err)
	}
	if got := addresses(t, res); got[0] != "10.40.0.50/24 gw 10.40.0.1" || got[1] != "fd00:40::50/64 gw fd00:40::1" {
		t.Fatalf("addresses = %q", got)
	}
	b := r.Attach(r.Pod(t), "eth0")
	b.Caps = map[string]any{"ips": []string{"10.40.0.50"}}
	if _, err := r.Add(list, b); err == nil || !strings.Contains(err.Error(), "not available") {
		t.Fatalf("ADD of a taken address: %v", err)
	}
	b.Caps = map[string]any{"ips": []string{"10.99.0.1"}}
	if _, err := r.Add(list, b); err == nil || !strings.Contains(err.Error(), "runtimeConfig.ips[0]") {
		t.Fatalf("ADD of an address outside every range: %v", err)
	}
	b.Caps = map[string]any{"ips": []string{"10.40.0.1"}}
	if _, err := r.Add(list, b); err == nil || !strings.Contains(err.Error(), "gateway") {
		t.Fatalf("ADD of the gateway: %v", err)
	}
	if len(n.files(t)) != 2 {
		t.Fatalf("failed ADDs left reservations: %q", n.files(t))
	}

	// args.cni.ips, through a conflist that carries args.
	n2 := newNetwork(t, "1.0.0")
	n2.name = "hl-args"
	list2 := r.Conflist(n2.conflist(ipam, `"args":{"cni":{"ips":["10.40.0.60","fd00:40::60"]}}`))
	c := r.Attach(r.Pod(t), "eth0")
	res, err = r.Add(list2, c)
	if err != nil {
		t.Fatal(err)
	}
	if got := addresses(t, res); got[0] != "10.40.0.60/24 gw 10.40.0.1" || got[1] != "fd00:40::60/64 gw fd00:40::1" {
		t.Fatalf("args.cni.ips addresses = %q", got)
	}

	// CNI_ARGS IP= through libcni's Args.
	n3 := newNetwork(t, "0.4.0")
	n3.name = "hl-cniargs"
	list3 := r.Conflist(n3.conflist(`"subnet":"10.41.0.0/24"`))
	d := r.Attach(r.Pod(t), "eth0")
	d.Args = [][2]string{{"IgnoreUnknown", "1"}, {"IP", "10.41.0.7"}, {"K8S_POD_NAME", "x"}}
	res, err = r.Add(list3, d)
	if err != nil {
		t.Fatal(err)
	}
	if got := addresses(t, res); got[0] != "10.41.0.7/24 gw 10.41.0.1" {
		t.Fatalf("CNI_ARGS IP addresses = %q", got)
	}
}

// TestIPRangesCapability: runtimeConfig.ipRanges go before the configured
// range sets (so the runtime's set is range set 0).
func TestIPRangesCapability(t *testing.T) {
	r := testnet.NewRuntime(t)
	n := newNetwork(t, "1.1.0")
	list := r.Conflist(n.conflist(`"ranges":[[{"subnet":"fd00:50::/64"}]]`, `"capabilities":{"ipRanges":true}`))
	a := r.Attach(r.Pod(t), "eth0")
	a.Caps = map[string]any{"ipRanges": [][]map[string]string{{{"subnet": "10.50.0.0/24", "rangeStart": "10.50.0.100", "rangeEnd": "10.50.0.110"}}}}
	res, err := r.Add(list, a)
	if err != nil {
		t.Fatal(err)
	}
	if got := addresses(t, res); len(got) != 2 || got[0] != "10.50.0.100/24 gw 10.50.0.1" || got[1] != "fd00:50::1/64 gw fd00:50::1" && got[1] != "fd00:50::2/64 gw fd00:50::1" {
		t.Fatalf("addresses = %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(n.dir(), "last_reserved_ip.0")); string(got) != "10.50.0.100" {
		t.Errorf("last_reserved_ip.0 = %q, want the runtime's range set first", got)
	}
}

// TestLegacyKeysAndRoundRobin: the top-level subnet/rangeStart/rangeEnd/
// gateway, a gateway inside the range never handed out, round-robin that
// wraps, and exhaustion (ADD fails, STATUS says 50 and which set).
func TestLegacyKeysAndRoundRobin(t *testing.T) {
	r := testnet.NewRuntime(t)
	n := newNetwork(t, "1.1.0")
	list := r.Conflist(n.conflist(`"subnet":"10.60.0.0/24","rangeStart":"10.60.0.10","rangeEnd":"10.60.0.14","gateway":"10.60.0.12"`))
	pod := r.Pod(t)
	var atts []string
	var got []string
	for i := 0; i < 4; i++ {
		a := r.Attach(pod, "eth0")
		res, err := r.Add(list, a)
		if err != nil {
			t.Fatalf("ADD %d: %v", i, err)
		}
		atts = append(atts, a.ContainerID)
		got = append(got, addresses(t, res)[0])
	}
	want := []string{"10.60.0.10/24 gw 10.60.0.12", "10.60.0.11/24 gw 10.60.0.12", "10.60.0.13/24 gw 10.60.0.12", "10.60.0.14/24 gw 10.60.0.12"}
	if !slices.Equal(got, want) {
		t.Fatalf("allocations = %q, want %q", got, want)
	}
	full := r.Attach(pod, "eth0")
	if _, err := r.Add(list, full); err == nil || !strings.Contains(err.Error(), "no IP addresses available") {
		t.Fatalf("ADD on a full range: %v", err)
	}
	err := r.Status(list)
	var e *types.Error
	if err == nil || !asCNI(err, &e) || e.Code != 50 || !strings.Contains(e.Msg, "ipam") || !strings.Contains(e.Msg, "exhausted") {
		t.Fatalf("STATUS on a full range: %v", err)
	}
	// Free .11; round-robin continues after .14, wraps and finds .11.
	if err := r.Del(list, &testnet.Attachment{ContainerID: atts[1], IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	res, err := r.Add(list, full)
	if err != nil {
		t.Fatal(err)
	}
	if got := addresses(t, res)[0]; got != "10.60.0.11/24 gw 10.60.0.12" {
		t.Fatalf("after wrap: %s", got)
	}
}

func asCNI(err error, e **types.Error) bool { return errors.As(err, e) }

// TestFailedMultiRangeAddReleases: when a later range set fails, what the
// ADD took from earlier sets is released, and what the attachment held
// before is not touched.
func TestFailedMultiRangeAddReleases(t *testing.T) {
	r := testnet.NewRuntime(t)
	n := newNetwork(t, "1.0.0")
	list := r.Conflist(n.conflist(`"ranges":[[{"subnet":"10.70.0.0/24"}],[{"subnet":"10.71.0.0/30"}]]`))
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	if _, err := r.Add(list, a); err != nil { // takes 10.71.0.2, the only address of /30 (.1 is the gateway)
		t.Fatal(err)
	}
	before := n.files(t)
	if _, err := r.Add(list, r.Attach(pod, "eth0")); err == nil {
		t.Fatal("ADD succeeded on an exhausted second range set")
	}
	wantFiles(t, n, before)
}

// TestBadInput: every bad input gets the right code, a message naming the
// field, and leaves nothing behind.
func TestBadInput(t *testing.T) {
	r := testnet.NewRuntime(t)
	n := newNetwork(t, "1.0.0")
	pod := r.Pod(t)
	cases := []struct {
		name, ipam, extra, args string
		code                    uint
		field                   string
	}{
		{"no ipam", "", "", "", 7, "ipam"},
		{"no ranges", `"routes":[]`, "", "", 7, "ipam.ranges"},
		{"bad subnet", `"ranges":[[{"subnet":"10.0.0.0/33"}]]`, "", "", 7, "ipam.ranges[0][0].subnet"},
		{"host bits", `"ranges":[[{"subnet":"10.0.0.1/24"}]]`, "", "", 7, "ipam.ranges[0][0].subnet"},
		{"too small /31", `"ranges":[[{"subnet":"10.0.0.0/31"}]]`, "", "", 7, "ipam.ranges[0][0].subnet"},
		{"too small /128", `"ranges":[[{"subnet":"fd00::/128"}]]`, "", "", 7, "ipam.ranges[0][0].subnet"},
		{"start outside", `"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}]]`, "", "", 7, "ipam.ranges[0][0].rangeStart"},
		{"end outside", `"ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.1.1"}]]`, "", "", 7, "ipam.ranges[0][0].rangeEnd"},
		{"end before start", `"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.5"}]]`, "", "", 7, "ipam.ranges[0][0].rangeEnd"},
		{"only gateway", `"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.1","rangeEnd":"10.0.0.1"}]]`, "", "", 7, "ipam.ranges[0][0]"},
		{"bad gateway", `"ranges":[[{"subnet":"10.0.0.0/24","gateway":"x"}]]`, "", "", 7, "ipam.ranges[0][0].gateway"},
		{"family gateway", `"ranges":[[{"subnet":"10.0.0.0/24","gateway":"fd00::1"}]]`, "", "", 7, "ipam.ranges[0][0].gateway"},
		{"mixed families", `"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]`, "", "", 7, "ipam.ranges[0][1]"},
		{"overlap in set", `"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.0.0/25"}]]`, "", "", 7, "ipam.ranges[0][1]"},
		{"overlapping sets", `"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.128/25"}]]`, "", "", 7, "ipam.ranges[1]"},
		{"empty set", `"ranges":[[]]`, "", "", 7, "ipam.ranges[0]"},
		{"legacy start without subnet", `"rangeStart":"10.0.0.5"`, "", "", 7, "ipam.subnet"},
		{"subnet not a string", `"ranges":[[{"subnet":5}]]`, "", "", 7, "subnet"},
		{"relative dataDir", `"ranges":[[{"subnet":"10.0.0.0/24"}]],"dataDir":"rel"`, "", "", 7, "ipam.dataDir"},
		{"requested outside", `"ranges":[[{"subnet":"10.0.0.0/24"}]]`, `"runtimeConfig":{"ips":["10.1.0.5"]}`, "", 7, "runtimeConfig.ips[0]"},
		{"requested garbage", `"ranges":[[{"subnet":"10.0.0.0/24"}]]`, `"args":{"cni":{"ips":["nope"]}}`, "", 7, "args.cni.ips[0]"},
		{"CNI_ARGS garbage", `"ranges":[[{"subnet":"10.0.0.0/24"}]]`, "", "IP=nope", 4, "CNI_ARGS IP"},
		{"CNI_ARGS unknown", `"ranges":[[{"subnet":"10.0.0.0/24"}]]`, "", "FOO=1", 4, "CNI_ARGS"},
		{"missing resolvConf", `"ranges":[[{"subnet":"10.0.0.0/24"}]],"resolvConf":"/nonexistent/resolv.conf"`, "", "", 7, "ipam.resolvConf"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var conf []byte
			if c.ipam == "" {
				conf = []byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"type":"host-local"}`, n.name))
			} else if c.extra != "" {
				conf = n.conf(c.ipam, c.extra)
			} else {
				conf = n.conf(c.ipam)
			}
			env := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=bad1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.BinDir, "CNI_ARGS=" + c.args}
			out, _, code := r.Exec("host-local", env, conf)
			if code == 0 {
				t.Fatalf("ADD succeeded: %s", out)
			}
			e := testnet.ParseError(t, out)
			if e.Code != c.code || !strings.Contains(e.Msg, c.field) {
				t.Fatalf("error = %d %q, want code %d naming %q", e.Code, e.Msg, c.code, c.field)
			}
			if f := n.files(t); len(f) != 0 {
				t.Fatalf("left reservations behind: %q", f)
			}
		})
	}
	t.Run("0.2.0 two v4 sets", func(t *testing.T) {
		conf := []byte(fmt.Sprintf(`{"cniVersion":"0.2.0","name":"x","type":"host-local","ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.1.0.0/24"}]]}}`, n.dataDir))
		out, _, _ := r.Exec("host-local", []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=bad1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.BinDir}, conf)
		if e := testnet.ParseError(t, out); e.Code != 7 || !strings.Contains(e.Msg, "0.3.0") {
			t.Fatalf("error = %d %q", e.Code, e.Msg)
		}
	})
	t.Run("DEL with nothing", func(t *testing.T) {
		out, _, code := r.Exec("host-local", []string{"CNI_COMMAND=DEL", "CNI_CONTAINERID=none", "CNI_IFNAME=eth0", "CNI_PATH=" + r.BinDir}, n.conf(`"ranges":[[{"subnet":"10.0.0.0/24"}]]`))
		if code != 0 {
			t.Fatalf("DEL of nothing: %s", out)
		}
		if _, err := os.Stat(n.dir()); err == nil {
			t.Error("DEL of nothing created the data dir")
		}
	})
	t.Run("DEL with broken ranges still releases", func(t *testing.T) {
		env := []string{"CNI_CONTAINERID=c9", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.BinDir}
		out, _, code := r.Exec("host-local", append(env, "CNI_COMMAND=ADD"), n.conf(`"ranges":[[{"subnet":"10.0.0.0/24"}]]`))
		if code != 0 {
			t.Fatal(string(out))
		}
		out, _, code = r.Exec("host-local", append(env, "CNI_COMMAND=DEL"), n.conf(`"ranges":[[{"subnet":"10.0.0.1/24"}]]`))
		if code != 0 {
			t.Fatalf("DEL: %s", out)
		}
		if f := n.files(t); len(f) != 0 {
			t.Fatalf("DEL left %q", f)
		}
	})
}

// execPlugin runs a plugin binary directly with a config and environment.
func execPlugin(t testing.TB, path string, env []string, conf []byte) (string, error) {
	t.Helper()
	cmd := exec.Command(path)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.Stdin = bytes.NewReader(conf)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %v: %w: %s %s", filepath.Base(path), env, err, out.String(), errb.String())
	}
	return out.String(), nil
}

func resultIPs(t testing.TB, out string) []string {
	t.Helper()
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("result %q: %v", out, err)
	}
	var ips []string
	for _, ip := range res.IPs {
		ips = append(ips, ip.Address)
	}
	return ips
}
