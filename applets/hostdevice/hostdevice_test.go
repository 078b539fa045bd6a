package hostdevice_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// node makes a runtime whose node has a veth "hd0" to hand to pods; its
// peer "hd0p" stays on the node with 10.40.0.1/24, so a pod that got hd0
// can prove it works by pinging it.
func node(t *testing.T) *testnet.Runtime {
	t.Helper()
	r := testnet.NewRuntime(t)
	r.Node.MustRun("ip", "link", "add", "hd0", "address", "02:00:00:00:40:02", "type", "veth", "peer", "name", "hd0p")
	r.Node.MustRun("ip", "link", "set", "hd0p", "up")
	r.Node.MustRun("ip", "addr", "add", "10.40.0.1/24", "dev", "hd0p")
	testnet.RequireReference(t, "static")
	r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
	return r
}

// ipamVersion is the newest spec version the IPAM plugins serve: cnibox's
// when the binary has host-local, else the reference's (1.0.0).
func ipamVersion(t *testing.T) string {
	if slices.Contains(testnet.Applets(t), "host-local") {
		return "1.1.0"
	}
	return "1.0.0"
}

func withIPAM(t *testing.T, v string) bool {
	return !cni.VersionAtLeast(v, "1.1.0") || ipamVersion(t) == "1.1.0"
}

const hostLocal = `"ipam":{"type":"host-local","ranges":[[{"subnet":"10.40.0.0/24","rangeStart":"10.40.0.2"}]]}`

var netSeq int

func list(t *testing.T, r *testnet.Runtime, version, fields string) *libcni.NetworkConfigList {
	t.Helper()
	netSeq++
	return r.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":"hd%d","plugins":[{"type":"host-device",%s}]}`, version, netSeq, fields))
}

type link struct {
	Name    string `json:"ifname"`
	Alias   string `json:"ifalias"`
	Address string `json:"address"`
}

func linkMap(t *testing.T, ns *testnet.NS) map[string]link {
	t.Helper()
	out := ipOut(t, ns, "-j", "link", "show")
	var ls []link
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		t.Fatal(err)
	}
	m := map[string]link{}
	for _, l := range ls {
		m[l.Name] = l
	}
	return m
}

// home checks that hd0 is on the node under its own name without alias,
// and that the pod has nothing but lo.
func home(t *testing.T, r *testnet.Runtime, pod *testnet.NS) {
	t.Helper()
	l, ok := linkMap(t, r.Node)["hd0"]
	if !ok || l.Alias != "" || l.Address != "02:00:00:00:40:02" {
		t.Errorf("hd0 not back home intact: %+v (node links %v)", l, keys(linkMap(t, r.Node)))
	}
	if pod != nil {
		if m := linkMap(t, pod); len(m) != 1 {
			t.Errorf("pod links: %v", keys(m))
		}
	}
}

func keys(m map[string]link) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestVersions moves hd0 into a pod and back at every spec version,
// through libcni: the pod reaches the node through it, CHECK passes, DEL
// gives it back under its own name, and DEL again is fine.
func TestVersions(t *testing.T) {
	r := node(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		fields := `"device":"hd0"`
		if withIPAM(t, v) {
			fields += "," + hostLocal
		}
		l := list(t, r, v, fields)
		pod := r.Pod(t)
		a := r.Attach(pod, "eth0")
		res, err := r.Add(l, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		in, ok := linkMap(t, pod)["eth0"]
		if !ok || in.Alias != "hd0" || in.Address != "02:00:00:00:40:02" {
			t.Fatalf("eth0 in the pod: %+v", in)
		}
		if _, ok := linkMap(t, r.Node)["hd0"]; ok {
			t.Fatal("hd0 still on the node")
		}
		cur, err := current.NewResultFromResult(res)
		if err != nil {
			t.Fatal(err)
		}
		if cni.VersionAtLeast(v, "0.3.0") && (len(cur.Interfaces) != 1 || cur.Interfaces[0].Name != "eth0" || cur.Interfaces[0].Mac != "02:00:00:00:40:02") {
			t.Errorf("result interfaces: %+v", cur.Interfaces)
		}
		if withIPAM(t, v) {
			if err := pod.Ping("10.40.0.1"); err != nil {
				t.Fatalf("pod cannot reach the node through hd0: %v", err)
			}
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := r.Check(l, a); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := r.Status(l); err != nil {
				t.Errorf("STATUS while the device is in a pod: %v", err)
			}
			if err := r.GC(l, a); err != nil {
				t.Fatalf("GC: %v", err)
			}
		}
		for i := 0; i < 2; i++ {
			if err := r.Del(l, a); err != nil {
				t.Fatalf("DEL #%d: %v", i+1, err)
			}
		}
		home(t, r, pod)
		if got := r.Reservations(l.Name); len(got) != 0 {
			t.Errorf("addresses left: %v", got)
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := r.Status(l); err != nil {
				t.Errorf("STATUS with the device home: %v", err)
			}
		}
	})
}

// TestCnitool drives the applet through the reference cnitool.
func TestCnitool(t *testing.T) {
	r := node(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		fields := `"hwaddr":"02:00:00:00:40:02"`
		if withIPAM(t, v) {
			fields += "," + hostLocal
		}
		l := list(t, r, v, fields)
		pod := r.Pod(t)
		if _, err := r.Cnitool("add", l.Name, pod, "CNI_IFNAME=net1"); err != nil {
			t.Fatal(err)
		}
		if _, ok := linkMap(t, pod)["net1"]; !ok {
			t.Fatal("net1 not in the pod")
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if _, err := r.Cnitool("check", l.Name, pod, "CNI_IFNAME=net1"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.Cnitool("del", l.Name, pod, "CNI_IFNAME=net1"); err != nil {
			t.Fatal(err)
		}
		home(t, r, pod)
	})
}

// TestDelNetnsGone: DEL after the pod's netns was deleted. A virtual
// device dies with the netns (nothing to restore, DEL succeeds); a
// physical one comes back to the initial netns under the pod's name (or
// devN) with its alias, which we reproduce by moving it to the node
// before deleting the pod, and DEL restores its name. IPAM is released in
// every case, also without CNI_NETNS.
func TestDelNetnsGone(t *testing.T) {
	for _, c := range []struct {
		name    string
		refund  string // name the kernel gives the returned device; "" = destroyed
		noNetns bool
	}{
		{name: "virtual device destroyed"},
		{name: "returned as eth0", refund: "eth0"},
		{name: "returned as dev7", refund: "dev7"},
		{name: "returned, no CNI_NETNS", refund: "eth0", noNetns: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := node(t)
			l := list(t, r, ipamVersion(t), `"device":"hd0",`+hostLocal)
			pod := r.Pod(t)
			a := r.Attach(pod, "eth0")
			if _, err := r.Add(l, a); err != nil {
				t.Fatal(err)
			}
			if c.refund != "" {
				pod.MustRun("ip", "link", "set", "eth0", "netns", r.Node.Name)
				if c.refund != "eth0" {
					r.Node.MustRun("ip", "link", "set", "eth0", "name", c.refund)
				}
			}
			pod.Delete()
			if c.noNetns {
				a.Pod = nil
			}
			if err := r.Del(l, a); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if c.refund != "" {
				home(t, r, nil)
			} else if _, ok := linkMap(t, r.Node)["hd0"]; ok {
				t.Error("a destroyed veth is back?")
			}
			if got := r.Reservations(l.Name); len(got) != 0 {
				t.Errorf("addresses left: %v", got)
			}
			if err := r.Del(l, a); err != nil {
				t.Fatalf("second DEL: %v", err)
			}
		})
	}
}

// TestBadInput: bad configs and failing steps give a CNI error and leave
// hd0 on the node as it was, with nothing allocated.
func TestBadInput(t *testing.T) {
	r := node(t)
	v := ipamVersion(t)
	for _, c := range []struct {
		name, fields string
		prep         func(pod *testnet.NS)
		code         uint
		want         string
	}{
		{name: "no selector", fields: hostLocal, code: 7, want: "device: one of"},
		{name: "bad hwaddr", fields: `"hwaddr":"zz",` + hostLocal, code: 7, want: `hwaddr: "zz"`},
		{name: "bad kernelpath", fields: `"kernelpath":"/proc/1",` + hostLocal, code: 7, want: "kernelpath"},
		{name: "pciBusID traversal", fields: `"pciBusID":"../../../etc",` + hostLocal, code: 7, want: "pciBusID"},
		{name: "missing device", fields: `"device":"nope0",` + hostLocal, code: 999, want: `device "nope0": device not found`},
		{name: "deviceID PCI not here", fields: `"device":"hd0","runtimeConfig":{"deviceID":"0000:99:00.0"},` + hostLocal, code: 999, want: `runtimeConfig.deviceID "0000:99:00.0": device not found`},
		{name: "deviceID aux not here", fields: `"runtimeConfig":{"deviceID":"mlx5_core.sf.9"},` + hostLocal, code: 999, want: `runtimeConfig.deviceID "mlx5_core.sf.9": device not found`},
		{name: "kernelpath not in this netns", fields: `"kernelpath":"/sys/devices/virtual/net/hd0",` + hostLocal, code: 999, want: "kernelpath"},
		{name: "ifname taken in the pod", fields: `"device":"hd0",` + hostLocal, code: 4, want: `CNI_IFNAME: "eth0" already exists in the pod`,
			prep: func(pod *testnet.NS) { pod.MustRun("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0") }},
		{name: "ipam fails", fields: `"device":"hd0","ipam":{"type":"host-local","ranges":[[{"subnet":"10.41.0.0/24","rangeStart":"10.41.0.300"}]]}`, code: 0},
		{name: "ipam missing", fields: `"device":"hd0","ipam":{"type":"no-such-ipam"}`, code: 7, want: "no-such-ipam"},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod := r.Pod(t)
			before := keys(linkMap(t, pod))
			if c.prep != nil {
				c.prep(pod)
				before = keys(linkMap(t, pod))
			}
			conf := fmt.Sprintf(`{"cniVersion":%q,"name":"bad","type":"host-device",%s}`, v, c.fields)
			env := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.Path}
			out, _, code := r.Exec("host-device", env, []byte(conf))
			if code == 0 {
				t.Fatalf("ADD succeeded: %s", out)
			}
			e := testnet.ParseError(t, out)
			if c.code != 0 && (e.Code != c.code || !strings.Contains(e.Msg, c.want)) {
				t.Errorf("error = %d %q, want %d containing %q", e.Code, e.Msg, c.code, c.want)
			}
			home(t, r, nil)
			if after := keys(linkMap(t, pod)); !slices.Equal(after, before) {
				t.Errorf("pod links %v, were %v", after, before)
			}
			if got := r.Reservations("bad"); len(got) != 0 {
				t.Errorf("allocations left: %v", got)
			}
			// The runtime's DEL of the refused container succeeds (unless
			// its IPAM plugin cannot be found) and moves nothing: no
			// device of this config is in the pod.
			env[0] = "CNI_COMMAND=DEL"
			out, _, code = r.Exec("host-device", env, []byte(conf))
			if delFails := c.name == "ipam missing"; (code != 0) != delFails {
				t.Errorf("DEL of the refused config: exit %d, %s", code, out)
			}
			home(t, r, nil)
			if after := keys(linkMap(t, pod)); !slices.Equal(after, before) {
				t.Errorf("pod links after DEL %v, were %v", after, before)
			}
		})
	}
}

// TestStatus: STATUS checks the config (code 7 without a selector) and
// does not depend on where the device is.
func TestStatus(t *testing.T) {
	r := node(t)
	for _, c := range []struct {
		fields string
		code   int
	}{{`"device":"hd0"`, 0}, {`"device":"gone0"`, 0}, {`"hwaddr":"02:00:00:00:40:02"`, 0}, {`"mtu":1400`, 7}} {
		conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"st","type":"host-device",%s}`, c.fields)
		out, _, code := r.Exec("host-device", []string{"CNI_COMMAND=STATUS", "CNI_PATH=" + r.Path}, []byte(conf))
		if c.code == 0 && code != 0 {
			t.Errorf("STATUS %s: %s", c.fields, out)
		}
		if c.code != 0 {
			if e := testnet.ParseError(t, out); code == 0 || int(e.Code) != c.code {
				t.Errorf("STATUS %s: exit %d: %s", c.fields, code, out)
			}
		}
	}
}

// ipOut runs ip in a netns and returns its stdout only: ip may warn on
// stderr (about a peer netns it cannot name, say), which must not mix
// into JSON.
func ipOut(t *testing.T, n *testnet.NS, args ...string) string {
	t.Helper()
	out, err := n.Command("ip", args...).Output()
	if err != nil {
		t.Fatalf("ip %v in %s: %v", args, n.Name, err)
	}
	return string(out)
}

// TestReferenceInterop: a node can switch between cnibox and the
// reference in the middle of a pod's life: a device one moved in, the
// other moves back out under its own name (both keep it in the alias).
func TestReferenceInterop(t *testing.T) {
	testnet.RequireReference(t, "host-device")
	for _, c := range []struct{ name, add, del string }{
		{"cnibox ADD, reference DEL", "cnibox", "reference"},
		{"reference ADD, cnibox DEL", "reference", "cnibox"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := node(t)
			path := map[string]string{
				"cnibox":    r.BinDir + ":" + testnet.ReferenceDir(),
				"reference": testnet.ReferenceDir() + ":" + r.BinDir,
			}
			l := list(t, r, "1.0.0", `"device":"hd0",`+hostLocal)
			pod := r.Pod(t)
			a := r.Attach(pod, "eth0")
			r.SetPath(path[c.add])
			if _, err := r.Add(l, a); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if err := pod.Ping("10.40.0.1"); err != nil {
				t.Fatalf("ping: %v", err)
			}
			r.SetPath(path[c.del])
			if err := r.Del(l, a); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if c.del == "reference" {
				// Debian's v1.1.1 leaves the alias set (= the name):
				// harmless, and our next ADD overwrites it.
				r.Node.MustRun("ip", "link", "set", "hd0", "alias", "")
			}
			home(t, r, pod)
		})
	}
}

// TestConcurrentMoves: several devices moved into several pods at once,
// and back, each through its own temporary netns, all end up home.
func TestConcurrentMoves(t *testing.T) {
	r := node(t)
	const n = 4
	lists := make([]*libcni.NetworkConfigList, n)
	atts := make([]*testnet.Attachment, n)
	for i := 0; i < n; i++ {
		dev := fmt.Sprintf("cd%d", i)
		r.Node.MustRun("ip", "link", "add", dev, "type", "veth", "peer", "name", dev+"p")
		lists[i] = list(t, r, ipamVersion(t), fmt.Sprintf(`"device":%q`, dev))
		atts[i] = r.Attach(r.Pod(t), "eth0")
	}
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) { _, err := r.Add(lists[i], atts[i]); errs <- err }(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Errorf("ADD: %v", err)
		}
	}
	for i := 0; i < n; i++ {
		if l, ok := linkMap(t, atts[i].Pod)["eth0"]; !ok || l.Alias != fmt.Sprintf("cd%d", i) {
			t.Errorf("pod %d: eth0 = %+v", i, l)
		}
	}
	for i := 0; i < n; i++ {
		go func(i int) { errs <- r.Del(lists[i], atts[i]) }(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Errorf("DEL: %v", err)
		}
	}
	m := linkMap(t, r.Node)
	for i := 0; i < n; i++ {
		if l, ok := m[fmt.Sprintf("cd%d", i)]; !ok || l.Alias != "" {
			t.Errorf("cd%d not home: %+v", i, l)
		}
	}
}

// TestGCRestoresReturnedDevice: a device the kernel handed back to the
// node from a pod netns destroyed without DEL is restored by GC.
func TestGCRestoresReturnedDevice(t *testing.T) {
	r := node(t)
	v := ipamVersion(t)
	if !cni.VersionAtLeast(v, "1.1.0") {
		t.Skip("GC needs an IPAM plugin that serves 1.1.0")
	}
	l := list(t, r, v, `"device":"hd0",`+hostLocal)
	pod := r.Pod(t)
	if _, err := r.Add(l, r.Attach(pod, "eth0")); err != nil {
		t.Fatal(err)
	}
	pod.MustRun("ip", "link", "set", "eth0", "netns", r.Node.Name)
	pod.Delete()
	conf := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"host-device","device":"hd0",%s}`, v, l.Name, hostLocal)
	out, _, code := r.Exec("host-device", []string{"CNI_COMMAND=GC", "CNI_PATH=" + r.Path}, []byte(conf))
	if code != 0 {
		t.Fatalf("GC: %s", out)
	}
	home(t, r, nil)
	if got := r.Reservations(l.Name); len(got) != 0 {
		t.Errorf("GC left allocations: %v", got)
	}
}

// TestKilledHalfway: a virtual device moves straight between node and
// pod (a temporary netns would destroy it with a killed plugin). DEL
// brings it home from every state a kill can leave: in the pod under its
// own name, with or without its alias, or home with the alias still set.
// And when the pod has a link of the device's name, ADD goes through a
// temporary netns.
func TestKilledHalfway(t *testing.T) {
	r := node(t)
	l := list(t, r, ipamVersion(t), `"device":"hd0"`)
	for _, c := range []struct {
		name string
		prep func(pod *testnet.NS)
	}{
		{"in the pod with alias", func(pod *testnet.NS) {
			r.Node.MustRun("ip", "link", "set", "hd0", "alias", "hd0")
			r.Node.MustRun("ip", "link", "set", "hd0", "netns", pod.Name)
		}},
		{"in the pod without alias", func(pod *testnet.NS) {
			r.Node.MustRun("ip", "link", "set", "hd0", "netns", pod.Name)
		}},
		{"home with alias", func(pod *testnet.NS) {
			r.Node.MustRun("ip", "link", "set", "hd0", "alias", "hd0")
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod := r.Pod(t)
			c.prep(pod)
			if err := r.Del(l, r.Attach(pod, "eth0")); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			home(t, r, pod)
		})
	}
	t.Run("pod has the device's name", func(t *testing.T) {
		pod := r.Pod(t)
		pod.MustRun("ip", "link", "add", "hd0", "type", "veth", "peer", "name", "y0")
		a := r.Attach(pod, "eth0")
		if _, err := r.Add(l, a); err != nil {
			t.Fatalf("ADD: %v", err)
		}
		if got := linkMap(t, pod)["eth0"]; got.Alias != "hd0" {
			t.Errorf("eth0 in the pod: %+v", got)
		}
		if err := r.Del(l, a); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		home(t, r, nil)
		if got := keys(linkMap(t, pod)); !slices.Equal(got, []string{"hd0", "lo", "y0"}) {
			t.Errorf("pod links %v", got)
		}
	})
}
