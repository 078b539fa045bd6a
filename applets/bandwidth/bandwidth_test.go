package bandwidth_test

import (
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// chainRuntime is a node whose CNI_PATH finds bridge and host-local: ours
// once they exist in cnibox, the reference ones (/usr/lib/cni) until then.
func chainRuntime(t *testing.T) *testnet.Runtime {
	r := testnet.NewRuntime(t)
	testnet.RequireReference(t, "bridge")
	r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
	return r
}

// skipUnchainable skips versions the bridge in CNI_PATH cannot run: the
// reference bridge (v1.1.1) stops at 1.0.0.
func skipUnchainable(t *testing.T, v string) {
	if v == "1.1.0" && !slices.Contains(testnet.Applets(t), "bridge") {
		t.Skip("cniVersion 1.1.0 needs cnibox's bridge (the reference bridge v1.1.1 supports up to 1.0.0); runs once applets/bridge lands")
	}
}

const gateway = "10.78.0.1"

func bridgeList(v, name string, plugins ...string) string {
	extra := ""
	for _, p := range plugins {
		extra += "," + p
	}
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[
	  {"type":"bridge","bridge":"cbx0","isGateway":true,"ipam":{"type":"host-local","subnet":"10.78.0.0/24","gateway":%q}}%s]}`,
		v, name, gateway, extra)
}

func ifbName(network, cid string) string {
	sum := sha512.Sum512([]byte(network + cid))
	return ("bwp" + hex.EncodeToString(sum[:]))[:15]
}

// shaping is what the node's kernel says about one attachment.
type shaping struct {
	HostVeth string
	Ingress  *netlink.Tbf // root tbf of the host veth
	Egress   *netlink.Tbf // root tbf of the ifb
	IFB      netlink.Link
	Redirect bool // ingress qdisc on the host veth with a filter to the ifb
	Qdiscs   []string
}

func readShaping(t *testing.T, r *testnet.Runtime, hostVeth, ifb string) shaping {
	t.Helper()
	s := shaping{HostVeth: hostVeth}
	err := r.Node.Do(func() error {
		if hostVeth != "" {
			host, err := netlinksafe.LinkByName(hostVeth)
			if err != nil {
				return err
			}
			qs, err := netlinksafe.QdiscList(host)
			if err != nil {
				return err
			}
			for _, q := range qs {
				s.Qdiscs = append(s.Qdiscs, q.Type())
				if tbf, ok := q.(*netlink.Tbf); ok && q.Attrs().Parent == netlink.HANDLE_ROOT {
					s.Ingress = tbf
				}
			}
			if l, err := netlinksafe.LinkByName(ifb); err == nil {
				fs, _ := netlinksafe.FilterList(host, netlink.MakeHandle(0xffff, 0))
				for _, f := range fs {
					if u, ok := f.(*netlink.U32); ok {
						for _, a := range u.Actions {
							if m, ok := a.(*netlink.MirredAction); ok && m.Ifindex == l.Attrs().Index {
								s.Redirect = true
							}
						}
					}
				}
			}
		}
		l, err := netlinksafe.LinkByName(ifb)
		if err != nil {
			return nil
		}
		s.IFB = l
		qs, err := netlinksafe.QdiscList(l)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if tbf, ok := q.(*netlink.Tbf); ok && q.Attrs().Parent == netlink.HANDLE_ROOT {
				s.Egress = tbf
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read shaping: %v", err)
	}
	return s
}

// hostVethOf returns the host-side interface in a result.
func hostVethOf(t testing.TB, res types.Result) string {
	t.Helper()
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range cur.Interfaces {
		if i.Sandbox == "" && strings.HasPrefix(i.Name, "veth") {
			return i.Name
		}
	}
	t.Fatalf("no host veth in %v", cur.Interfaces)
	return ""
}

// wantTBF is the kernel's view of rate bits/s and burst bits at latency.
func wantTBF(rate, burst uint64, latencyMs float64) (r uint64, limit uint32) {
	return rate / 8, uint32(float64(rate/8)*latencyMs/1000) + uint32(burst/8)
}

func ifbLinks(t *testing.T, r *testnet.Runtime) []string {
	t.Helper()
	var names []string
	r.Node.Do(func() error {
		links, err := netlinksafe.LinkList()
		for _, l := range links {
			if l.Type() == "ifb" {
				names = append(names, l.Attrs().Name)
			}
		}
		return err
	})
	return names
}

const limits = `{"type":"bandwidth","ingressRate":8000000,"ingressBurst":400000,"egressRate":4000000,"egressBurst":200000}`

// TestEveryVersion: ADD, CHECK (and CHECK failing on tampering), DEL at
// every version bandwidth accepts, chained after bridge.
func TestEveryVersion(t *testing.T) {
	r := chainRuntime(t)
	testnet.ForEachVersion(t, cni.VersionsFrom("0.3.0"), func(t *testing.T, v string) {
		skipUnchainable(t, v)
		name := "bw" + strings.ReplaceAll(v, ".", "")
		list := r.Conflist(bridgeList(v, name, limits))
		pod := r.Pod(t)
		a := r.Attach(pod, "eth0")
		res, err := r.Add(list, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		host, ifb := hostVethOf(t, res), ifbName(name, a.ContainerID)
		s := readShaping(t, r, host, ifb)
		inRate, inLimit := wantTBF(8000000, 400000, 25)
		outRate, outLimit := wantTBF(4000000, 200000, 25)
		if s.Ingress == nil || s.Ingress.Rate != inRate || s.Ingress.Limit != inLimit || s.Ingress.Handle != netlink.MakeHandle(1, 0) {
			t.Errorf("host veth %s root tbf = %+v, want rate %d limit %d handle 1:", host, s.Ingress, inRate, inLimit)
		}
		if s.IFB == nil || s.Egress == nil || s.Egress.Rate != outRate || s.Egress.Limit != outLimit || !s.Redirect {
			t.Fatalf("ifb %s: link %v tbf %+v redirect %v; want rate %d limit %d", ifb, s.IFB, s.Egress, s.Redirect, outRate, outLimit)
		}
		attrs := s.IFB.Attrs()
		if attrs.Alias != "cnibox-bandwidth "+name+" "+a.ContainerID || attrs.MTU != 1500 || attrs.Flags&net.FlagUp == 0 {
			t.Errorf("ifb attrs: alias %q mtu %d flags %v", attrs.Alias, attrs.MTU, attrs.Flags)
		}
		cur, _ := current.NewResultFromResult(res)
		if !slices.ContainsFunc(cur.Interfaces, func(i *current.Interface) bool { return i.Name == ifb && i.Sandbox == "" }) {
			t.Errorf("result lacks the ifb: %v", cur.Interfaces)
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := r.Check(list, a); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			r.Node.MustRun("tc", "qdisc", "change", "dev", host, "root", "handle", "1:", "tbf", "rate", "9mbit", "burst", "50000", "latency", "25ms")
			if err := r.Check(list, a); err == nil || !strings.Contains(err.Error(), "ingress") {
				t.Errorf("CHECK after changing the ingress rate: %v", err)
			}
			r.Node.MustRun("tc", "qdisc", "del", "dev", host, "root")
			if err := r.Check(list, a); err == nil {
				t.Error("CHECK passed without the ingress tbf")
			}
		}
		if err := r.Del(list, a); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if names := ifbLinks(t, r); len(names) != 0 {
			t.Errorf("ifbs left after DEL: %v", names)
		}
		if err := r.Del(list, a); err != nil {
			t.Fatalf("second DEL: %v", err)
		}
	})
}

// TestDelRemovesQdiscs: a DEL of bandwidth alone (the veth stays) leaves
// neither the ifb nor any qdisc on the host veth; then an egress-only check
// of the redirect filter.
func TestDelRemovesQdiscs(t *testing.T) {
	r := chainRuntime(t)
	const v, name = "1.0.0", "bwdel"
	list := r.Conflist(bridgeList(v, name, limits))
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	res, err := r.Add(list, a)
	if err != nil {
		t.Fatal(err)
	}
	host := hostVethOf(t, res)
	if err := r.Check(list, a); err != nil {
		t.Fatal(err)
	}
	// Tampering with the redirect is caught too.
	r.Node.MustRun("tc", "filter", "del", "dev", host, "parent", "ffff:")
	if err := r.Check(list, a); err == nil || !strings.Contains(err.Error(), "redirect") {
		t.Errorf("CHECK without the redirect filter: %v", err)
	}
	bwOnly := r.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[%s]}`, v, name, limits))
	if err := r.Del(bwOnly, a); err != nil {
		t.Fatal(err)
	}
	s := readShaping(t, r, host, ifbName(name, a.ContainerID))
	if s.IFB != nil || s.Ingress != nil || slices.Contains(s.Qdiscs, "ingress") || slices.Contains(s.Qdiscs, "tbf") {
		t.Errorf("after DEL: ifb %v qdiscs %v", s.IFB, s.Qdiscs)
	}
	if err := r.Del(r.Conflist(bridgeList(v, name)), a); err != nil {
		t.Fatal(err)
	}
}

// TestRuntimeConfig: the bandwidth capability applies when the config has
// no static limits, and static limits win when it has any.
func TestRuntimeConfig(t *testing.T) {
	r := chainRuntime(t)
	const v = "1.0.0"
	caps := map[string]any{"bandwidth": map[string]any{"ingressRate": 16000000, "ingressBurst": 160000, "egressRate": 24000000, "egressBurst": 240000}}
	for _, c := range []struct {
		name, plugin      string
		inRate, outRate   uint64
		inBurst, outBurst uint64
		latency           float64
	}{
		{"rtc", `{"type":"bandwidth","capabilities":{"bandwidth":true}}`, 16000000, 24000000, 160000, 240000, 25},
		{"static", `{"type":"bandwidth","capabilities":{"bandwidth":true},"ingressRate":800000,"ingressBurst":80000,"latencyMs":5}`, 800000, 0, 80000, 0, 5},
	} {
		t.Run(c.name, func(t *testing.T) {
			list := r.Conflist(bridgeList(v, c.name, c.plugin))
			pod := r.Pod(t)
			a := r.Attach(pod, "eth0")
			a.Caps = caps
			res, err := r.Add(list, a)
			if err != nil {
				t.Fatal(err)
			}
			s := readShaping(t, r, hostVethOf(t, res), ifbName(c.name, a.ContainerID))
			rate, limit := wantTBF(c.inRate, c.inBurst, c.latency)
			if s.Ingress == nil || s.Ingress.Rate != rate || s.Ingress.Limit != limit {
				t.Errorf("ingress tbf %+v, want rate %d limit %d", s.Ingress, rate, limit)
			}
			if c.outRate == 0 && (s.IFB != nil || slices.Contains(s.Qdiscs, "ingress")) {
				t.Errorf("static ingress-only config still shaped egress: %v %v", s.IFB, s.Qdiscs)
			}
			if c.outRate != 0 {
				rate, limit := wantTBF(c.outRate, c.outBurst, c.latency)
				if s.Egress == nil || s.Egress.Rate != rate || s.Egress.Limit != limit {
					t.Errorf("egress tbf %+v, want rate %d limit %d", s.Egress, rate, limit)
				}
			}
			if err := r.Check(list, a); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			if err := r.Del(list, a); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCnitool drives the chain with the bandwidth capability through the
// reference cnitool.
func TestCnitool(t *testing.T) {
	r := chainRuntime(t)
	testnet.ForEachVersion(t, cni.VersionsFrom("0.3.0"), func(t *testing.T, v string) {
		skipUnchainable(t, v)
		name := "bwct" + strings.ReplaceAll(v, ".", "")
		r.Conflist(bridgeList(v, name, `{"type":"bandwidth","capabilities":{"bandwidth":true}}`))
		pod := r.Pod(t)
		capArgs := `CAP_ARGS={"bandwidth":{"ingressRate":1000000,"ingressBurst":100000,"egressRate":2000000,"egressBurst":100000}}`
		out, err := r.Cnitool("add", name, pod, capArgs)
		if err != nil {
			t.Fatal(err)
		}
		ifb := ifbName(name, testnet.CnitoolContainerID(pod.Path))
		if !strings.Contains(out, ifb) {
			t.Errorf("result lacks %s: %s", ifb, out)
		}
		var res struct {
			Interfaces []struct{ Name, Sandbox string }
		}
		json.Unmarshal([]byte(out), &res)
		host := ""
		for _, i := range res.Interfaces {
			if i.Sandbox == "" && strings.HasPrefix(i.Name, "veth") {
				host = i.Name
			}
		}
		s := readShaping(t, r, host, ifb)
		if s.Ingress == nil || s.Ingress.Rate != 125000 || s.Egress == nil || s.Egress.Rate != 250000 || !s.Redirect {
			t.Errorf("shaping: %+v", s)
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if _, err := r.Cnitool("check", name, pod, capArgs); err != nil {
				t.Error(err)
			}
		}
		if _, err := r.Cnitool("del", name, pod, capArgs); err != nil {
			t.Fatal(err)
		}
		if names := ifbLinks(t, r); len(names) != 0 {
			t.Errorf("ifbs left after DEL: %v", names)
		}
	})
}

// TestReferenceInterop: cnibox installs what the reference installs for an
// ordinary request (qdiscs and the ingress filter, action for action), and
// the reference plugin CHECKs and DELs what cnibox set up (same ifb name,
// same qdisc numbers), so a node can switch back.
func TestReferenceInterop(t *testing.T) {
	r := chainRuntime(t)
	testnet.RequireReference(t, "bandwidth")
	const v, name = "1.0.0", "bwref"
	list := r.Conflist(bridgeList(v, name, limits))
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	// tc's view of the attachment, with the host veth's name (random)
	// and the ifb's (the same on both sides) replaced.
	tcView := func(res types.Result) string {
		host, ifb := hostVethOf(t, res), ifbName(name, a.ContainerID)
		var b strings.Builder
		for _, args := range [][]string{{"qdisc", "show", "dev", host}, {"filter", "show", "dev", host, "ingress"}, {"qdisc", "show", "dev", ifb}} {
			out, err := r.Node.Run("tc", args...)
			if err != nil {
				t.Fatalf("tc %v: %v", args, err)
			}
			b.WriteString(out)
		}
		// A root qdisc's refcnt is the device's TX queues + 1: cnibox's
		// host end has one queue (shared/veth), the reference's one per CPU.
		return regexp.MustCompile(`refcnt \d+ `).ReplaceAllString(strings.NewReplacer(host, "HOST", ifb, "IFB").Replace(b.String()), "")
	}
	ours := r.BinDir + ":" + testnet.ReferenceDir()
	r.SetPath(testnet.ReferenceDir() + ":" + r.BinDir)
	res, err := r.Add(list, a)
	if err != nil {
		t.Fatalf("reference ADD: %v", err)
	}
	refView := tcView(res)
	if err := r.Del(list, a); err != nil {
		t.Fatalf("reference DEL: %v", err)
	}
	r.SetPath(ours)
	if res, err = r.Add(list, a); err != nil {
		t.Fatal(err)
	}
	if view := tcView(res); view != refView {
		t.Errorf("cnibox's tc state:\n%s\nthe reference's for the same request:\n%s", view, refView)
	}
	r.SetPath(testnet.ReferenceDir())
	if err := r.Check(list, a); err != nil {
		t.Errorf("reference CHECK of cnibox's shaping: %v", err)
	}
	if err := r.Del(list, a); err != nil {
		t.Errorf("reference DEL: %v", err)
	}
	if names := ifbLinks(t, r); len(names) != 0 {
		t.Errorf("ifbs left after the reference's DEL: %v", names)
	}
}

// TestBadInput: each mistake is code 7 naming the field, and nothing is
// left in the node (no ifb, no qdisc).
func TestBadInput(t *testing.T) {
	r := chainRuntime(t)
	const v, name = "1.0.0", "bwbad"
	bridgeOnly := r.Conflist(bridgeList(v, name))
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	res, err := r.Add(bridgeOnly, a)
	if err != nil {
		t.Fatal(err)
	}
	host := hostVethOf(t, res)
	prev, _ := res.GetAsVersion(v)
	prevJSON, _ := json.Marshal(prev)

	// A pod whose interface is not a veth: nothing to shape on the host.
	other := r.Pod(t)
	other.MustRun("ip", "link", "add", "eth0", "type", "bridge")
	otherPrev := fmt.Sprintf(`{"cniVersion":%q,"interfaces":[{"name":"eth0","sandbox":%q}],"ips":[]}`, v, other.Path)

	for _, c := range []struct {
		keys, want string
		prev       string
		netns      string
	}{
		{keys: `"ingressRate":1000000`, want: "ingressBurst: must be set when ingressRate is"},
		{keys: `"egressBurst":1000000`, want: "egressRate: must be set when egressBurst is"},
		{keys: `"ingressRate":1000000,"ingressBurst":34359738360`, want: "ingressBurst: 34359738360 bits is too large"},
		{keys: `"egressRate":4,"egressBurst":1000`, want: "egressRate: 4 bits/s is below the minimum"},
		{keys: `"runtimeConfig":{"bandwidth":{"egressRate":1000000}}`, want: "runtimeConfig.bandwidth.egressBurst: must be set"},
		{keys: `"ingressRate":1000000,"ingressBurst":10000,"latencyMs":0`, want: "latencyMs: 0 is outside"},
		{keys: `"ingressRate":1000000,"ingressBurst":10000,"latencyMs":20000`, want: "latencyMs: 20000 is outside"},
		{keys: `"ingressRate":"fast","ingressBurst":10000`, want: `"ingressRate"`},
		{keys: `"ingressRate":-1,"ingressBurst":10000`, want: `"ingressRate"`},
		{keys: `"ingressRate":1000000,"ingressBurst":100000`, prev: "none", want: "prevResult: missing"},
		{keys: `"egressRate":1000000,"egressBurst":100000`, prev: otherPrev, netns: other.Path, want: "eth0 is a bridge, not a veth"},
	} {
		p := string(prevJSON)
		if c.prev != "" {
			p = c.prev
		}
		stdin := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"bandwidth",%s,"prevResult":%s}`, v, name, c.keys, p)
		if c.prev == "none" {
			stdin = fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"bandwidth",%s}`, v, name, c.keys)
		}
		netns := pod.Path
		if c.netns != "" {
			netns = c.netns
		}
		out, _, code := r.Exec("bandwidth", []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + a.ContainerID, "CNI_IFNAME=eth0",
			"CNI_NETNS=" + netns, "CNI_PATH=" + r.BinDir}, []byte(stdin))
		if code == 0 {
			t.Errorf("%s: ADD succeeded", c.keys)
			continue
		}
		e := testnet.ParseError(t, out)
		if e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, c.want) {
			t.Errorf("%s: got %d %q, want 7 containing %q", c.keys, e.Code, e.Msg, c.want)
		}
		if s := readShaping(t, r, host, ifbName(name, a.ContainerID)); s.IFB != nil || len(s.Qdiscs) > 0 && slices.ContainsFunc(s.Qdiscs, func(q string) bool { return q == "tbf" || q == "ingress" }) {
			t.Errorf("%s: left ifb %v qdiscs %v", c.keys, s.IFB, s.Qdiscs)
		}
	}
	if names := ifbLinks(t, r); len(names) != 0 {
		t.Errorf("ifbs left: %v", names)
	}
}

// TestGC: with the result cache gone (DEL never came), GC deletes this
// network's IFBs whose attachment is not valid, and keeps valid ones, other
// networks' and IFBs without our alias (the reference's).
func TestGC(t *testing.T) {
	r := chainRuntime(t)
	const v = "1.0.0"
	egress := `{"type":"bandwidth","egressRate":1000000,"egressBurst":100000}`
	gca := r.Conflist(bridgeList(v, "gca", egress))
	gcb := r.Conflist(bridgeList(v, "gcb", egress))
	var atts []*testnet.Attachment
	for _, l := range []string{"gca", "gca", "gcb"} {
		list := gca
		if l == "gcb" {
			list = gcb
		}
		a := r.Attach(r.Pod(t), "eth0")
		if _, err := r.Add(list, a); err != nil {
			t.Fatal(err)
		}
		atts = append(atts, a)
	}
	r.Node.MustRun("ip", "link", "add", "bwp0123456789ab", "type", "ifb")
	have := func(network string, a *testnet.Attachment) bool {
		return slices.Contains(ifbLinks(t, r), ifbName(network, a.ContainerID))
	}
	if !have("gca", atts[0]) || !have("gca", atts[1]) || !have("gcb", atts[2]) {
		t.Fatalf("ifbs after ADD: %v", ifbLinks(t, r))
	}
	gc := []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"gca","type":"bandwidth",
	  "cni.dev/valid-attachments":[{"containerID":%q,"ifname":"eth0"}]}`, atts[0].ContainerID))
	out, _, code := r.Exec("bandwidth", []string{"CNI_COMMAND=GC", "CNI_PATH=" + r.BinDir}, gc)
	if code != 0 {
		t.Fatalf("GC: %s", out)
	}
	if !have("gca", atts[0]) || have("gca", atts[1]) || !have("gcb", atts[2]) || !slices.Contains(ifbLinks(t, r), "bwp0123456789ab") {
		t.Errorf("after GC: %v; want the valid, the other network's and the foreign one", ifbLinks(t, r))
	}
	// libcni GC at 1.1.0 with no valid attachment, a bandwidth-only list.
	if err := r.GC(r.Conflist(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"gca","plugins":[%s]}`, egress))); err != nil {
		t.Fatalf("libcni GC: %v", err)
	}
	if have("gca", atts[0]) || !have("gcb", atts[2]) {
		t.Errorf("after libcni GC: %v", ifbLinks(t, r))
	}
	if err := r.GC(r.Conflist(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"gcb","plugins":[%s]}`, egress))); err != nil {
		t.Fatalf("libcni GC: %v", err)
	}
	if names := ifbLinks(t, r); !slices.Equal(names, []string{"bwp0123456789ab"}) {
		t.Errorf("after GC of both networks: %v", names)
	}
}

// transfer sends n bytes over TCP from one netns to a listener on
// listenIP in another, and returns the rate the receiver saw in bits/s. It
// counts from the moment skip bytes have arrived, so the token bucket's
// initial burst and TCP's slow start do not inflate the result.
func transfer(t *testing.T, from, to *testnet.NS, listenIP string, n, skip int64) float64 {
	t.Helper()
	var ln net.Listener
	if err := to.Do(func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(listenIP, "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		bits float64
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		buf := make([]byte, 256<<10)
		var total int64
		var start time.Time
		for {
			k, err := c.Read(buf)
			total += int64(k)
			if start.IsZero() && total >= skip {
				start = time.Now()
				skip = total
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				done <- result{err: err}
				return
			}
		}
		if total != n {
			done <- result{err: fmt.Errorf("received %d of %d bytes", total, n)}
			return
		}
		done <- result{bits: float64(total-skip) * 8 / time.Since(start).Seconds()}
	}()
	var c net.Conn
	if err := from.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	chunk := make([]byte, 256<<10)
	for sent := int64(0); sent < n; {
		k := min(int64(len(chunk)), n-sent)
		if _, err := c.Write(chunk[:k]); err != nil {
			t.Fatalf("send: %v", err)
		}
		sent += k
	}
	c.(*net.TCPConn).CloseWrite()
	res := <-done
	if res.err != nil {
		t.Fatalf("receive: %v", res.err)
	}
	return res.bits
}

// TestMeasuredRate: with 10 Mbit/s each way, bulk TCP into and out of the
// pod runs within ±20% of the limit; without bandwidth in the chain the
// same transfer runs far faster. 8 MB per shaped direction is ~6.5 s at
// the limit: long enough that the 1 Mbit burst and scheduling noise of a
// loaded machine stay in the low percents.
func TestMeasuredRate(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 8 MB each way through a 10 Mbit/s limit (~15 s)")
	}
	r := chainRuntime(t)
	const v = "1.0.0"
	const limit = 10_000_000
	shaped := r.Conflist(bridgeList(v, "rate", fmt.Sprintf(`{"type":"bandwidth","ingressRate":%d,"ingressBurst":1000000,"egressRate":%d,"egressBurst":1000000}`, limit, limit)))
	plain := r.Conflist(bridgeList(v, "norate"))
	podIP := func(res types.Result) string {
		cur, _ := current.NewResultFromResult(res)
		return cur.IPs[0].Address.IP.String()
	}
	const n, skip = 8 << 20, 512 << 10

	pod := r.Pod(t)
	pa := r.Attach(pod, "eth0")
	res, err := r.Add(plain, pa)
	if err != nil {
		t.Fatal(err)
	}
	in := transfer(t, r.Node, pod, podIP(res), n, skip)
	out := transfer(t, pod, r.Node, gateway, n, skip)
	if err := r.Del(plain, pa); err != nil { // frees its address for the next pod
		t.Fatal(err)
	}
	t.Logf("unshaped: into the pod %.1f Mbit/s, out of it %.1f Mbit/s", in/1e6, out/1e6)
	if in < 3*limit || out < 3*limit {
		t.Errorf("unshaped transfers ran at %.1f / %.1f Mbit/s; want well above the 10 Mbit/s limit", in/1e6, out/1e6)
	}

	pod2 := r.Pod(t)
	a := r.Attach(pod2, "eth0")
	res, err = r.Add(shaped, a)
	if err != nil {
		t.Fatal(err)
	}
	in = transfer(t, r.Node, pod2, podIP(res), n, skip)
	out = transfer(t, pod2, r.Node, gateway, n, skip)
	t.Logf("shaped at 10 Mbit/s: into the pod %.2f Mbit/s, out of it %.2f Mbit/s", in/1e6, out/1e6)
	for dir, rate := range map[string]float64{"into the pod": in, "out of the pod": out} {
		if rate < 0.8*limit || rate > 1.2*limit {
			t.Errorf("%s: %.2f Mbit/s, want 10 ±20%%", dir, rate/1e6)
		}
	}
	if err := r.Del(shaped, a); err != nil {
		t.Fatal(err)
	}
	if names := ifbLinks(t, r); len(names) != 0 {
		t.Errorf("ifbs left after DEL: %v", names)
	}
}

// TestDefaultConflist runs conflists/default.conflist (bridge + host-local
// + loopback + tuning + bandwidth) as shipped, with the bandwidth and mac
// capabilities, through libcni: ADD shapes and tunes, CHECK passes, DEL
// leaves no IFB.
func TestDefaultConflist(t *testing.T) {
	r := testnet.NewRuntime(t)
	_, file, _, _ := runtime.Caller(0)
	data, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "conflists", "default.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	list := r.Conflist(string(data))
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	a.Caps = map[string]any{"mac": "02:00:00:c0:ff:ee",
		"bandwidth": map[string]any{"ingressRate": 10000000, "ingressBurst": 1000000, "egressRate": 10000000, "egressBurst": 1000000}}
	res, err := r.Add(list, a)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	s := readShaping(t, r, hostVethOf(t, res), ifbName(list.Name, a.ContainerID))
	if s.Ingress == nil || s.Ingress.Rate != 1250000 || s.Egress == nil || s.Egress.Rate != 1250000 || !s.Redirect {
		t.Errorf("shaping: %+v", s)
	}
	if out := pod.MustRun("ip", "-br", "link", "show", "eth0"); !strings.Contains(out, "02:00:00:c0:ff:ee") {
		t.Errorf("pod MAC: %s, want 02:00:00:c0:ff:ee (tuning, mac capability)", out)
	}
	if err := r.Check(list, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := r.Del(list, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if names := ifbLinks(t, r); len(names) != 0 {
		t.Errorf("ifbs left after DEL: %v", names)
	}
}

// TestAfterPtp: ptp's veth pods are shaped the same way; a pod whose
// interface is not a veth passes through when it asks for no limits.
func TestAfterPtp(t *testing.T) {
	r := chainRuntime(t)
	const v, name = "1.1.0", "bwptp"
	skipUnchainable(t, v)
	if !slices.Contains(testnet.Applets(t), "ptp") {
		t.Skip("cniVersion 1.1.0 after ptp needs cnibox's ptp")
	}
	list := r.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[
	  {"type":"ptp","ipam":{"type":"host-local","subnet":"10.79.0.0/24"}},%s]}`, v, name, limits))
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	res, err := r.Add(list, a)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	s := readShaping(t, r, hostVethOf(t, res), ifbName(name, a.ContainerID))
	inRate, _ := wantTBF(8000000, 400000, 25)
	outRate, _ := wantTBF(4000000, 200000, 25)
	if s.Ingress == nil || s.Ingress.Rate != inRate || s.Egress == nil || s.Egress.Rate != outRate || !s.Redirect {
		t.Errorf("shaping after ptp: %+v", s)
	}
	if err := r.Check(list, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := r.Del(list, a); err != nil {
		t.Fatal(err)
	}
	if names := ifbLinks(t, r); len(names) != 0 {
		t.Errorf("ifbs left after DEL: %v", names)
	}

	// No limits asked for: ADD and CHECK pass whatever the interface is.
	other := r.Pod(t)
	other.MustRun("ip", "link", "add", "eth0", "type", "bridge")
	prev := fmt.Sprintf(`{"cniVersion":%q,"interfaces":[{"name":"eth0","sandbox":%q}],"ips":[]}`, v, other.Path)
	for _, cmd := range []string{"ADD", "CHECK", "DEL"} {
		stdin := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"bandwidth","capabilities":{"bandwidth":true},"prevResult":%s}`, v, name, prev)
		out, _, code := r.Exec("bandwidth", []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=x1", "CNI_IFNAME=eth0",
			"CNI_NETNS=" + other.Path, "CNI_PATH=" + r.BinDir}, []byte(stdin))
		if code != 0 {
			t.Errorf("%s without limits on a non-veth pod: %s", cmd, out)
		}
	}
}

// TestGCFullChain: a runtime that lost its state (no cached results, so no
// DEL) GCs the whole chain at 1.1.0: bridge removes the stale pod's veth
// (and with it the qdiscs), bandwidth its IFB; the valid pod keeps both.
func TestGCFullChain(t *testing.T) {
	r := chainRuntime(t)
	if !slices.Contains(testnet.Applets(t), "bridge") {
		t.Skip("GC of the chain needs cnibox's bridge")
	}
	const name = "bwgc"
	list := r.Conflist(bridgeList("1.1.0", name, limits))
	valid, stale := r.Attach(r.Pod(t), "eth0"), r.Attach(r.Pod(t), "eth0")
	resValid, err := r.Add(list, valid)
	if err != nil {
		t.Fatal(err)
	}
	resStale, err := r.Add(list, stale)
	if err != nil {
		t.Fatal(err)
	}
	hostValid, hostStale := hostVethOf(t, resValid), hostVethOf(t, resStale)
	if err := os.RemoveAll(r.CacheDir); err != nil {
		t.Fatal(err)
	}
	if err := r.GC(list, valid); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if s := readShaping(t, r, hostValid, ifbName(name, valid.ContainerID)); s.Ingress == nil || s.Egress == nil || !s.Redirect {
		t.Errorf("GC harmed the valid pod's shaping: %+v", s)
	}
	r.Node.Do(func() error {
		if _, err := netlinksafe.LinkByName(hostStale); err == nil {
			t.Errorf("stale pod's veth %s (and its qdiscs) still there after GC", hostStale)
		}
		return nil
	})
	if names := ifbLinks(t, r); !slices.Equal(names, []string{ifbName(name, valid.ContainerID)}) {
		t.Errorf("ifbs after GC: %v, want only the valid pod's", names)
	}
}
