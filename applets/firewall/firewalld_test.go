package firewall_test

import (
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
	"github.com/cnibox/cnibox/shared/testing/traffic"
)

// startFirewalld runs the real firewalld in the node netns on a private
// system bus and points DBUS_SYSTEM_BUS_ADDRESS of this process — and so
// of every plugin libcni runs — at that bus.
func startFirewalld(t *testing.T, node *testnet.NS) *testnet.Firewalld {
	t.Helper()
	fw := testnet.StartFirewalld(t, node)
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", fw.Addr)
	return fw
}

func zoneCall(t *testing.T, fw *testnet.Firewalld, method, zone, src string) {
	t.Helper()
	if err := fw.Call("zone."+method, nil, zone, src); err != nil {
		t.Fatal(err)
	}
}

func querySource(t *testing.T, fw *testnet.Firewalld, zone, src string) bool {
	t.Helper()
	var in bool
	if err := fw.Call("zone.querySource", &in, zone, src); err != nil {
		t.Fatal(err)
	}
	return in
}

// TestFirewalld: the podman chain (firewall "backend": "") on a node where
// the real firewalld runs: the pod's addresses join the trusted zone, so
// firewalld forwards its traffic; DEL (also without prevResult) and GC
// take them out again.
func TestFirewalld(t *testing.T) {
	r := testnet.NewRuntime(t)
	r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
	out := testnet.NewNS(t, "outside")
	n := r.Node
	n.MustRun("sysctl", "-qw", "net.ipv4.ip_forward=1")
	n.MustRun("ip", "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", out.Name)
	n.MustRun("ip", "addr", "add", "192.168.77.1/24", "dev", "ext0")
	n.MustRun("ip", "link", "set", "ext0", "up")
	out.MustRun("ip", "addr", "add", "192.168.77.2/24", "dev", "eth0")
	out.MustRun("ip", "link", "set", "eth0", "up")
	fw := startFirewalld(t, n)
	traffic.Serve(t, out, 80, "outside")

	list := r.Conflist(`{"cniVersion":"0.4.0","name":"podman-fwd","plugins":[
 {"type":"bridge","bridge":"cni-podman7","isGateway":true,"ipMasq":true,"hairpinMode":true,
  "ipam":{"type":"host-local","routes":[{"dst":"0.0.0.0/0"}],"ranges":[[{"subnet":"10.87.0.0/24","gateway":"10.87.0.1"}]]}},
 {"type":"portmap","capabilities":{"portMappings":true}},
 {"type":"firewall","backend":""},
 {"type":"tuning"}]}`)
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	traffic.ExpectNot(t, pod, "tcp", "192.168.77.2", 80, "outside") // no network yet
	if _, err := r.Add(list, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if !querySource(t, fw, "trusted", "10.87.0.2/32") {
		t.Fatal("pod address is not a source of the trusted zone")
	}
	traffic.Expect(t, pod, "tcp", "192.168.77.2", 80, "outside")
	if err := r.Check(list, a); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	// Out of the zone, firewalld forwards nothing for the pod, and CHECK sees it.
	zoneCall(t, fw, "removeSource", "trusted", "10.87.0.2/32")
	traffic.ExpectNot(t, pod, "tcp", "192.168.77.2", 80, "outside")
	if err := r.Check(list, a); err == nil {
		t.Fatal("CHECK passed with the pod out of the zone")
	}
	zoneCall(t, fw, "addSource", "trusted", "10.87.0.2/32")
	if err := r.Del(list, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if querySource(t, fw, "trusted", "10.87.0.2/32") {
		t.Fatal("pod address still in the trusted zone after DEL")
	}

	// DEL without prevResult and GC find the address from cnibox's record.
	keys := `,"firewalldZone":"internal"`
	bus := "DBUS_SYSTEM_BUS_ADDRESS=" + fw.Addr
	for i, id := range []string{"pod-a", "pod-b"} {
		if out, errb, code := r.Exec("firewall", append(env("ADD", id), bus), raw("1.1.0", "fwd", keys, i+2, true)); code != 0 {
			t.Fatalf("ADD %s: %s %s", id, out, errb)
		}
	}
	if !querySource(t, fw, "internal", "10.10.9.2/32") || !querySource(t, fw, "internal", "fd10:9::3/128") {
		t.Fatal("sources missing from zone internal")
	}
	if out, _, code := r.Exec("firewall", append(env("DEL", "pod-a"), bus), raw("1.1.0", "fwd", keys, 0, false)); code != 0 {
		t.Fatalf("DEL without prevResult: %s", out)
	}
	gc := []byte(`{"cniVersion":"1.1.0","name":"fwd","type":"firewall"` + keys + `,"cni.dev/valid-attachments":[]}`)
	if out, _, code := r.Exec("firewall", []string{"CNI_COMMAND=GC", "CNI_PATH=/nonexistent", bus}, gc); code != 0 {
		t.Fatalf("GC: %s", out)
	}
	for _, src := range []string{"10.10.9.2/32", "10.10.9.3/32", "fd10:9::2/128", "fd10:9::3/128"} {
		if querySource(t, fw, "internal", src) {
			t.Errorf("%s still in zone internal after DEL/GC", src)
		}
	}
	status := []byte(`{"cniVersion":"1.1.0","name":"fwd","type":"firewall","backend":"firewalld"}`)
	if out, _, code := r.Exec("firewall", []string{"CNI_COMMAND=STATUS", bus}, status); code != 0 {
		t.Fatalf("STATUS with firewalld running: %s", out)
	}
}
