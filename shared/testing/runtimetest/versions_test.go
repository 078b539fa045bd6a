package runtimetest_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// matrixCase is how one applet is run on its own: the plugins of a list
// in which it does its job (an IPAM applet under bridge, a chained applet
// after bridge), the interface name, and what the node needs first.
type matrixCase struct {
	plugins string // JSON plugin objects; %[1]s is the state dir
	ifName  string
	chained bool // needs prevResult, so no list before 0.3.0
	setup   func(t *testing.T, r *testnet.Runtime)
	skip    string
}

const (
	hostLocal = `{"type":"host-local","ranges":[[{"subnet":"10.55.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}`
	bridgeHL  = `{"type":"bridge","bridge":"mtx0","isGateway":true,"ipam":` + hostLocal + `}`
)

var matrix = map[string]matrixCase{
	"loopback":    {plugins: `{"type":"loopback"}`, ifName: "lo"},
	"bridge":      {plugins: bridgeHL},
	"host-local":  {plugins: bridgeHL},
	"static":      {plugins: `{"type":"bridge","bridge":"mtx0","ipam":{"type":"static","addresses":[{"address":"10.55.0.9/24","gateway":"10.55.0.1"}]}}`},
	"ptp":         {plugins: `{"type":"ptp","ipam":` + hostLocal + `}`},
	"macvlan":     {plugins: `{"type":"macvlan","master":"eth0","ipam":` + hostLocal + `}`, setup: uplinkVeth},
	"ipvlan":      {plugins: `{"type":"ipvlan","master":"eth0","ipam":` + hostLocal + `}`, setup: uplinkVeth},
	"vlan":        {plugins: `{"type":"vlan","master":"eth0","vlanId":42,"ipam":` + hostLocal + `}`, setup: uplinkVeth},
	"host-device": {plugins: `{"type":"host-device","device":"hd0","ipam":` + hostLocal + `}`, setup: hostDeviceVeth},
	"tuning":      {plugins: bridgeHL + `,{"type":"tuning","mtu":1400,"dataDir":"/var/lib/cni/tuning"}`, chained: true}, // /var/lib/cni is the test's own
	"portmap":     {plugins: bridgeHL + `,{"type":"portmap","capabilities":{"portMappings":true}}`, chained: true},
	"bandwidth":   {plugins: bridgeHL + `,{"type":"bandwidth","ingressRate":8000000,"ingressBurst":80000,"egressRate":8000000,"egressBurst":80000}`, chained: true},
	"firewall":    {plugins: bridgeHL + `,{"type":"firewall","backend":"iptables"}`, chained: true},
	"tap":         {plugins: `{"type":"tap","ipam":` + hostLocal + `}`},
	"dummy":       {plugins: `{"type":"dummy","ipam":` + hostLocal + `}`},
	"sbr":         {plugins: bridgeHL + `,{"type":"sbr"}`, chained: true},
	"vrf":         {plugins: bridgeHL + `,{"type":"vrf","vrfname":"red"}`, chained: true},
	"dhcp":        {skip: "dhcp needs a DHCP server and its daemon: TestShippedConflists/dhcp runs it against dnsmasq"},
}

func uplinkVeth(t *testing.T, r *testnet.Runtime) {
	r.Node.MustRun("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	r.Node.MustRun("ip", "link", "set", "eth0", "up")
}

func hostDeviceVeth(t *testing.T, r *testnet.Runtime) {
	r.Node.MustRun("ip", "link", "add", "hd0", "type", "veth", "peer", "name", "hd0p")
}

// supportedVersions asks the applet (VERSION) which spec versions it takes.
func supportedVersions(t *testing.T, r *testnet.Runtime, applet string) []string {
	out, _, code := r.Exec(applet, []string{"CNI_COMMAND=VERSION"}, []byte(`{"cniVersion":"1.1.0"}`))
	var info struct {
		SupportedVersions []string `json:"supportedVersions"`
	}
	if code != 0 || json.Unmarshal(out, &info) != nil || len(info.SupportedVersions) == 0 {
		t.Fatalf("%s VERSION: exit %d: %s", applet, code, out)
	}
	return info.SupportedVersions
}

// TestSpecVersionMatrix: every applet of the binary, at every spec
// version libcni knows. A version the applet says it supports runs ADD →
// CHECK (≥0.4.0) → DEL (and STATUS, GC at 1.1.0) through libcni, and the
// result is parsed by libcni's types at that version; a version it does
// not support is refused with code 1.
func TestSpecVersionMatrix(t *testing.T) {
	testnet.RequireRoot(t)
	for _, applet := range testnet.Applets(t) {
		applet := applet
		t.Run(applet, func(t *testing.T) {
			mc, ok := matrix[applet]
			if !ok {
				// Not a failure, so an applet landing first does not turn
				// main red; the skip message says what to add.
				t.Skipf("NO MATRIX CASE for new applet %s: add one to shared/testing/runtimetest/versions_test.go", applet)
			}
			if mc.skip != "" {
				t.Skip(mc.skip)
			}
			r := testnet.NewRuntime(t)
			r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
			if mc.setup != nil {
				mc.setup(t, r)
			}
			supported := supportedVersions(t, r, applet)
			for _, v := range cni.AllVersions {
				v := v
				t.Run(v, func(t *testing.T) {
					if !contains(supported, v) {
						refused(t, r, applet, v)
						return
					}
					if mc.chained && !cni.VersionAtLeast(v, "0.3.0") {
						t.Skipf("%s is chained: lists have no prevResult before 0.3.0", applet)
					}
					addCheckDel(t, r, applet, mc, v)
				})
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// refused: ADD at a version the applet does not support fails with code 1.
func refused(t *testing.T, r *testnet.Runtime, applet, v string) {
	pod := r.Pod(t)
	conf := fmt.Sprintf(`{"cniVersion":%q,"name":"refused","type":%q}`, v, applet)
	out, _, code := r.Exec(applet, []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=refused", "CNI_NETNS=" + pod.Path,
		"CNI_IFNAME=eth0", "CNI_PATH=" + r.BinDir}, []byte(conf))
	if code == 0 {
		t.Fatalf("%s accepted cniVersion %s, which its VERSION does not list: %s", applet, v, out)
	}
	if e := testnet.ParseError(t, out); e.Code != 1 {
		t.Errorf("%s at unsupported %s: code %d (%s), want 1", applet, v, e.Code, e.Msg)
	}
}

func addCheckDel(t *testing.T, r *testnet.Runtime, applet string, mc matrixCase, v string) {
	list := r.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":"matrix-%s","plugins":[%s]}`,
		v, strings.ReplaceAll(v, ".", ""), mc.plugins))
	pod := r.Pod(t)
	ifName := mc.ifName
	if ifName == "" {
		ifName = "eth0"
	}
	a := r.Attach(pod, ifName)
	a.Caps = map[string]any{"portMappings": []map[string]any{{"hostPort": 18095, "containerPort": 80, "protocol": "tcp"}}}
	res, err := r.Add(list, a)
	if err != nil {
		if strings.Contains(err.Error(), "not supported") && (applet == "ipvlan" || applet == "vlan" || applet == "dummy" || applet == "vrf") {
			t.Skipf("%s: this kernel lacks the link type (runs in the VM): %v", applet, err)
		}
		t.Fatalf("ADD: %v", err)
	}
	if res.Version() != v {
		t.Errorf("ADD result version %s, want %s", res.Version(), v)
	}
	// Round-trip through libcni's own types at that version.
	raw, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatalf("libcni cannot convert the %s result: %v\n%s", v, err, raw)
	}
	if len(cur.IPs) == 0 {
		t.Errorf("ADD result has no IP: %s", raw)
	}
	if cni.VersionAtLeast(v, "0.3.0") && len(cur.Interfaces) == 0 {
		t.Errorf("ADD result at %s has no interfaces: %s", v, raw)
	}
	if cni.VersionAtLeast(v, "0.4.0") {
		if err := r.Check(list, a); err != nil {
			t.Errorf("CHECK: %v", err)
		}
	}
	if err := r.Del(list, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if err := r.Del(list, a); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	if cni.VersionAtLeast(v, "1.1.0") {
		if err := r.Status(list); err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code != 50 {
				t.Errorf("STATUS: %v", err)
			}
		}
		if err := r.GC(list); err != nil {
			t.Errorf("GC: %v", err)
		}
	}
}
