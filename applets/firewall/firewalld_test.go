package firewall_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/cnibox/cnibox/shared/testnet"
	"github.com/cnibox/cnibox/shared/traffic"
)

const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`

// startFirewalld runs Debian's real firewalld inside the node netns,
// attached to a private system bus (a dbus-daemon of the test's own), and
// points DBUS_SYSTEM_BUS_ADDRESS of this process — and so of every plugin
// libcni runs — at that bus. Both are stopped when the test ends.
func startFirewalld(t *testing.T, node *testnet.NS) string {
	t.Helper()
	for _, bin := range []string{"firewalld", "dbus-daemon"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (make test installs it): %v", bin, err)
		}
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "system_bus_socket")
	conf := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(busConfig, sock)), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := "unix:path=" + sock
	bus := exec.Command("dbus-daemon", "--config-file="+conf, "--nofork", "--nopidfile")
	if err := bus.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Process.Kill(); bus.Wait() })
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	var log strings.Builder
	fwd := node.Command("env", "DBUS_SYSTEM_BUS_ADDRESS="+addr, "firewalld", "--nofork", "--nopid")
	fwd.Stdout, fwd.Stderr = &log, &log
	if err := fwd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fwd.Process.Kill(); fwd.Wait() })
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)

	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatalf("connect to the test's system bus: %v", err)
	}
	defer conn.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		// firewalld answers once it has loaded its configuration.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var state string
		err := conn.Object("org.fedoraproject.FirewallD1", "/org/fedoraproject/FirewallD1").
			CallWithContext(ctx, "org.fedoraproject.FirewallD1.getDefaultZone", 0).Store(&state)
		cancel()
		if err == nil {
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("firewalld did not come up: %v\n%s", err, log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func zoneCall(t *testing.T, addr, method, zone, src string) {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Object("org.fedoraproject.FirewallD1", "/org/fedoraproject/FirewallD1").
		Call("org.fedoraproject.FirewallD1.zone."+method, 0, zone, src).Err; err != nil {
		t.Fatal(err)
	}
}

func querySource(t *testing.T, addr, zone, src string) bool {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var in bool
	if err := conn.Object("org.fedoraproject.FirewallD1", "/org/fedoraproject/FirewallD1").
		Call("org.fedoraproject.FirewallD1.zone.querySource", 0, zone, src).Store(&in); err != nil {
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
	addr := startFirewalld(t, n)
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
	if !querySource(t, addr, "trusted", "10.87.0.2/32") {
		t.Fatal("pod address is not a source of the trusted zone")
	}
	traffic.Expect(t, pod, "tcp", "192.168.77.2", 80, "outside")
	if err := r.Check(list, a); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	// Out of the zone, firewalld forwards nothing for the pod, and CHECK sees it.
	zoneCall(t, addr, "removeSource", "trusted", "10.87.0.2/32")
	traffic.ExpectNot(t, pod, "tcp", "192.168.77.2", 80, "outside")
	if err := r.Check(list, a); err == nil {
		t.Fatal("CHECK passed with the pod out of the zone")
	}
	zoneCall(t, addr, "addSource", "trusted", "10.87.0.2/32")
	if err := r.Del(list, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if querySource(t, addr, "trusted", "10.87.0.2/32") {
		t.Fatal("pod address still in the trusted zone after DEL")
	}

	// DEL without prevResult and GC find the address from cnibox's record.
	keys := `,"firewalldZone":"internal"`
	bus := "DBUS_SYSTEM_BUS_ADDRESS=" + addr
	for i, id := range []string{"pod-a", "pod-b"} {
		if out, errb, code := r.Exec("firewall", append(env("ADD", id), bus), raw("1.1.0", "fwd", keys, i+2, true)); code != 0 {
			t.Fatalf("ADD %s: %s %s", id, out, errb)
		}
	}
	if !querySource(t, addr, "internal", "10.10.9.2/32") || !querySource(t, addr, "internal", "fd10:9::3/128") {
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
		if querySource(t, addr, "internal", src) {
			t.Errorf("%s still in zone internal after DEL/GC", src)
		}
	}
	status := []byte(`{"cniVersion":"1.1.0","name":"fwd","type":"firewall","backend":"firewalld"}`)
	if out, _, code := r.Exec("firewall", []string{"CNI_COMMAND=STATUS", bus}, status); code != 0 {
		t.Fatalf("STATUS with firewalld running: %s", out)
	}
}
