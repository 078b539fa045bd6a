package flannel_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/testing/testnet"
	"github.com/cnibox/cnibox/shared/testing/traffic"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// k3sConflist is k3s's generated 10-flannel.conflist (pkg/agent/flannel
// setup_linux.go) with one key added, subnetFile: flannel's default
// /run/flannel/subnet.env is the machine's and tests never write there.
// dataDir is the default, /var/lib/cni/flannel: the runtime's own.
const k3sConflist = `{
  "name":"cbr0",
  "cniVersion":"1.0.0",
  "plugins":[
    {
      "type":"flannel",
      "subnetFile":%q,
      "delegate":{
        "hairpinMode":true,
        "forceAddress":true,
        "isDefaultGateway":true
      }
    },
    {
      "type":"portmap",
      "capabilities":{
        "portMappings":true
      }
    },
    {
      "type":"bandwidth",
      "capabilities":{
        "bandwidth":true
      }
    }
  ]
}`

const vxlanEnv = "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"

func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// TestK3sChain runs k3s's conflist through libcni with flannel, the
// bridge and host-local in-process: two pods reach each other and the
// node, the saved delegate config is the reference's file, CHECK, GC and
// STATUS work; with the subnet file gone STATUS says 50, ADD fails with
// 11 naming the file, DEL still cleans up; nothing is left.
func TestK3sChain(t *testing.T) {
	r := testnet.NewRuntime(t)
	subnetFile := filepath.Join(t.TempDir(), "flannel", "subnet.env")
	os.MkdirAll(filepath.Dir(subnetFile), 0o755)
	if err := os.WriteFile(subnetFile, []byte(vxlanEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	list := r.Conflist(fmt.Sprintf(k3sConflist, subnetFile))

	// The bridge, and portmap's and bandwidth's node-wide chains, stay
	// after the last pod as the reference's do: the leak check starts
	// after a first pod came and went.
	warm := r.Attach(r.Pod(t), "eth0")
	warm.Caps = map[string]any{"portMappings": []map[string]any{{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}}}
	if _, err := r.Add(list, warm); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if err := r.Del(list, warm); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	before := r.Snapshot(t)

	p1, p2 := r.Pod(t), r.Pod(t)
	a1, a2 := r.Attach(p1, "eth0"), r.Attach(p2, "eth0")
	a2.Caps = map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}}
	var ips []string
	for _, a := range []*testnet.Attachment{a1, a2} {
		res, err := r.Add(list, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		cur, err := current.NewResultFromResult(res)
		if err != nil {
			t.Fatal(err)
		}
		if len(cur.IPs) != 1 || !strings.HasPrefix(cur.IPs[0].Address.String(), "10.42.3.") || cur.IPs[0].Gateway.String() != "10.42.3.1" {
			t.Fatalf("result IPs %v, want one in 10.42.3.0/24 via 10.42.3.1", cur.IPs)
		}
		ips = append(ips, cur.IPs[0].Address.IP.String())

		saved, err := os.ReadFile(filepath.Join(r.StateDir, "flannel", a.ContainerID))
		if err != nil {
			t.Fatalf("the saved delegate config: %v", err)
		}
		want := `{"cniVersion":"1.0.0","forceAddress":true,"hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.42.3.0/24"}]],"routes":[{"dst":"10.42.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}`
		if string(saved) != want {
			t.Errorf("saved delegate config\n got %s\nwant %s", saved, want)
		}
	}
	if mtu := strings.Fields(p1.MustRun("cat", "/sys/class/net/eth0/mtu"))[0]; mtu != "1450" {
		t.Errorf("pod MTU %s, want FLANNEL_MTU 1450", mtu)
	}
	routes := p1.MustRun("ip", "route")
	for _, want := range []string{"default via 10.42.3.1", "10.42.0.0/16 via 10.42.3.1"} {
		if !strings.Contains(routes, want) {
			t.Errorf("pod routes lack %q:\n%s", want, routes)
		}
	}
	traffic.Serve(t, p2, 80, "pod2")
	traffic.Expect(t, p1, "tcp", ips[1], 80, "pod2")
	if err := p1.Ping(ips[1]); err != nil {
		t.Error(err)
	}
	if err := r.Node.Ping(ips[0]); err != nil {
		t.Error(err)
	}
	traffic.Expect(t, p1, "tcp", "10.42.3.1", 8080, "pod2") // hostPort through portmap

	if err := r.Check(list, a1); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	// libcni sends GC and STATUS from spec 1.1.0 on.
	list11 := r.Conflist(strings.Replace(fmt.Sprintf(k3sConflist, subnetFile), `"1.0.0"`, `"1.1.0"`, 1))
	if err := r.Status(list11); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	if err := r.GC(list11, a1, a2); err != nil {
		t.Errorf("GC: %v", err)
	}
	if _, err := os.Stat(filepath.Join(r.StateDir, "flannel", a1.ContainerID)); err != nil {
		t.Errorf("GC with the attachment valid removed its saved config: %v", err)
	}

	// flanneld gone: its subnet file too.
	if err := os.Remove(subnetFile); err != nil {
		t.Fatal(err)
	}
	err := r.Status(list11)
	if cniCode(err) != 50 || !strings.Contains(err.Error(), subnetFile) {
		t.Errorf("STATUS without the subnet file: %v, want code 50 naming %s", err, subnetFile)
	}
	a3 := r.Attach(r.Pod(t), "eth0")
	_, err = r.Add(list, a3)
	if cniCode(err) != 11 || !strings.Contains(err.Error(), subnetFile) || !strings.Contains(err.Error(), "flanneld") {
		t.Errorf("ADD without the subnet file: %v, want code 11 naming %s and flanneld", err, subnetFile)
	}
	if err := r.Del(list, a3); err != nil {
		t.Errorf("DEL of the failed ADD: %v", err)
	}
	a1.Pod.Delete() // and DEL without the netns
	for _, a := range []*testnet.Attachment{a1, a2, a2} {
		if err := r.Del(list, a); err != nil {
			t.Errorf("DEL without the subnet file: %v", err)
		}
	}
	r.AssertNoLeaks(t, before, "after DEL of every pod")
}

// TestGCAndCheck: GC removes the saved configs (and, through the bridge
// and host-local, the address) of this network's pods the runtime no
// longer knows, and leaves other networks' files; CHECK catches a pod
// whose interface was removed behind the runtime's back.
func TestGCAndCheck(t *testing.T) {
	r := testnet.NewRuntime(t)
	subnetFile := filepath.Join(t.TempDir(), "subnet.env")
	if err := os.WriteFile(subnetFile, []byte(vxlanEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	list := r.Conflist(strings.Replace(fmt.Sprintf(k3sConflist, subnetFile), `"1.0.0"`, `"1.1.0"`, 1))
	a1, a2 := r.Attach(r.Pod(t), "eth0"), r.Attach(r.Pod(t), "eth0")
	for _, a := range []*testnet.Attachment{a1, a2} {
		if _, err := r.Add(list, a); err != nil {
			t.Fatalf("ADD: %v", err)
		}
	}
	other := filepath.Join(r.StateDir, "flannel", "other-network-pod")
	if err := os.WriteFile(other, []byte(`{"name":"other","type":"bridge"}`), 0o600); err != nil {
		t.Fatal(err)
	}

	a2.Pod.MustRun("ip", "link", "del", "eth0")
	if err := r.Check(list, a2); err == nil {
		t.Error("CHECK of a pod without its interface passed")
	}

	if err := r.GC(list, a1); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if _, err := os.Stat(filepath.Join(r.StateDir, "flannel", a2.ContainerID)); !os.IsNotExist(err) {
		t.Errorf("GC kept the saved config of the invalid attachment: %v", err)
	}
	for _, f := range []string{filepath.Join(r.StateDir, "flannel", a1.ContainerID), other} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("GC removed %s: %v", f, err)
		}
	}
	if got := r.Reservations("cbr0"); len(got) != 1 {
		t.Errorf("reservations after GC: %v, want only the valid pod's", got)
	}
	if err := r.Del(list, a1); err != nil {
		t.Errorf("DEL: %v", err)
	}
}

// TestExecDelegate: with the reference bridge and host-local first in
// CNI_PATH, flannel execs them (the in-process path is only for cnibox's
// own applets); a pod ADDed that way is DELeted by flannel after
// switching CNI_PATH back, from the same saved file.
func TestExecDelegate(t *testing.T) {
	r := testnet.NewRuntime(t)
	ref := testnet.RequireReference(t, "bridge")
	testnet.RequireReference(t, "host-local")
	// A directory with only the reference's bridge and host-local, then
	// cnibox's links for the rest (flannel, portmap, bandwidth).
	dir := t.TempDir()
	for _, p := range []string{"bridge", "host-local"} {
		if err := os.Symlink(filepath.Join(filepath.Dir(ref), p), filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
	}
	r.SetPath(dir + ":" + r.BinDir)
	subnetFile := filepath.Join(t.TempDir(), "subnet.env")
	if err := os.WriteFile(subnetFile, []byte(vxlanEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	list := r.Conflist(fmt.Sprintf(k3sConflist, subnetFile))
	a := r.Attach(r.Pod(t), "eth0")
	res, err := r.Add(list, a)
	if err != nil {
		t.Fatalf("ADD with the reference delegate: %v", err)
	}
	out, _ := json.Marshal(res)
	if !strings.Contains(string(out), "10.42.3.2/24") {
		t.Errorf("result %s lacks 10.42.3.2/24", out)
	}
	r.SetPath(r.BinDir)
	if err := r.Del(list, a); err != nil {
		t.Fatalf("DEL by cnibox's delegate: %v", err)
	}
	if got := r.Reservations("cbr0"); len(got) != 0 {
		t.Errorf("reservations after DEL: %v", got)
	}
	if _, err := os.Stat(filepath.Join(r.StateDir, "flannel", a.ContainerID)); !os.IsNotExist(err) {
		t.Errorf("DEL kept the saved config: %v", err)
	}
}

// TestReferenceSwitch: a pod ADDed by flannel-io/cni-plugin's flannel is
// DELeted by cnibox's and the other way round, and both save the same
// file. The reference is not in make ref-plugins (the Go module proxy
// refuses its module here): CNIBOX_REF_FLANNEL names a flannel binary
// built from its source (v1.9.1-flannel1: go build in a checkout).
func TestReferenceSwitch(t *testing.T) {
	ref := os.Getenv("CNIBOX_REF_FLANNEL")
	if ref == "" {
		t.Skip("CNIBOX_REF_FLANNEL is not set (a flannel-io/cni-plugin flannel binary)")
	}
	r := testnet.NewRuntime(t)
	// refDir: the reference flannel, and cnibox for everything else.
	refDir := t.TempDir()
	ents, err := os.ReadDir(r.BinDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		target := filepath.Join(r.BinDir, e.Name())
		if e.Name() == "flannel" {
			target = ref
		}
		if err := os.Symlink(target, filepath.Join(refDir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	subnetFile := filepath.Join(t.TempDir(), "subnet.env")
	if err := os.WriteFile(subnetFile, []byte(vxlanEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	list := r.Conflist(fmt.Sprintf(k3sConflist, subnetFile))
	sides := map[string]string{"reference": refDir, "cnibox": r.BinDir}
	saved := map[string]string{}
	for _, sw := range [][2]string{{"reference", "cnibox"}, {"cnibox", "reference"}} {
		a := r.Attach(r.Pod(t), "eth0")
		r.SetPath(sides[sw[0]])
		res, err := r.Add(list, a)
		if err != nil {
			t.Fatalf("ADD by %s: %v", sw[0], err)
		}
		out, _ := json.Marshal(res)
		file := filepath.Join(r.StateDir, "flannel", a.ContainerID)
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%s saved no delegate config: %v", sw[0], err)
		}
		saved[sw[0]] = string(data)
		r.SetPath(sides[sw[1]])
		if err := r.Del(list, a); err != nil {
			t.Fatalf("DEL by %s of %s's pod (%s): %v", sw[1], sw[0], out, err)
		}
		if _, err := os.Stat(file); !os.IsNotExist(err) {
			t.Errorf("DEL by %s kept %s's saved config: %v", sw[1], sw[0], err)
		}
		if got := r.Reservations("cbr0"); len(got) != 0 {
			t.Errorf("DEL by %s left %s's reservation %v", sw[1], sw[0], got)
		}
		if v := r.Veths(); len(v) != 0 {
			t.Errorf("DEL by %s left %s's veths %v", sw[1], sw[0], v)
		}
	}
	if saved["reference"] != saved["cnibox"] {
		t.Errorf("saved delegate configs differ:\nreference %s\ncnibox    %s", saved["reference"], saved["cnibox"])
	}
}
