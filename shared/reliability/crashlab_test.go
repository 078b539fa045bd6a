package reliability

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/cnibox/cnibox/shared/testnet"
)

// dhcpLab is a node whose "uplink" veth leads to dnsmasq in a netns of its
// own (10.39.0.1, serving 10.39.0.100-200), with cnibox's dhcp daemon
// running in the node on a socket, pidfile and lease file in the test's
// temporary directory (never the machine's /run/cni/dhcp.sock). Pods
// attach with macvlan on uplink (or bridge, see newDHCPBridgeLab) and
// dhcp IPAM (in-process in the main plugin).
type dhcpLab struct {
	t      *testing.T
	r      *testnet.Runtime
	list   *libcni.NetworkConfigList
	dir    string
	sock   string
	leases string // the daemon's lease file
	server string // dnsmasq's lease file
	daemon *exec.Cmd
	log    *os.File
}

func newDHCPLab(t *testing.T) *dhcpLab {
	t.Helper()
	return buildDHCPLab(t, false)
}

// newDHCPBridgeLab is a dhcpLab whose pods attach with the bridge plugin
// to br-dhcp, of which uplink is a port (the node's address is on the
// bridge).
func newDHCPBridgeLab(t *testing.T) *dhcpLab {
	t.Helper()
	return buildDHCPLab(t, true)
}

func buildDHCPLab(t *testing.T, bridge bool) *dhcpLab {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("dnsmasq not installed (Debian package dnsmasq-base; make test-deps installs it)")
	}
	r := testnet.NewRuntime(t)
	srv := testnet.NewNS(t, "dhcpsrv")
	dir := t.TempDir()
	l := &dhcpLab{t: t, r: r, dir: dir, sock: filepath.Join(dir, "run", "dhcp.sock"),
		leases: filepath.Join(dir, "state", "leases.json"), server: filepath.Join(dir, "dnsmasq.leases")}
	r.Node.MustRun("ip", "link", "add", "uplink", "type", "veth", "peer", "name", "srv0", "netns", srv.Name)
	if bridge {
		r.Node.MustRun("ip", "link", "add", "br-dhcp", "type", "bridge")
		r.Node.MustRun("ip", "link", "set", "uplink", "master", "br-dhcp", "up")
		r.Node.MustRun("ip", "addr", "add", "10.39.0.2/24", "dev", "br-dhcp")
		r.Node.MustRun("ip", "link", "set", "br-dhcp", "up")
	} else {
		r.Node.MustRun("ip", "addr", "add", "10.39.0.2/24", "dev", "uplink")
		r.Node.MustRun("ip", "link", "set", "uplink", "up")
	}
	srv.MustRun("ip", "addr", "add", "10.39.0.1/24", "dev", "srv0")
	srv.MustRun("ip", "link", "set", "srv0", "up")

	dlog := filepath.Join(dir, "dnsmasq.log")
	dnsmasq := srv.Command("dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--user=root",
		"--no-ping", "--interface=srv0", "--bind-interfaces", "--dhcp-range=10.39.0.100,10.39.0.200,255.255.255.0,2m",
		"--dhcp-leasefile="+l.server, "--pid-file="+filepath.Join(dir, "dnsmasq.pid"),
		"--log-dhcp", "--log-facility="+dlog, "--dhcp-option=option:router,10.39.0.1")
	if err := dnsmasq.Start(); err != nil {
		t.Fatalf("start dnsmasq: %v", err)
	}
	t.Cleanup(func() {
		_ = dnsmasq.Process.Signal(syscall.SIGTERM)
		_ = dnsmasq.Wait()
	})
	waitUntil(t, 10*time.Second, "dnsmasq to start", func() bool {
		data, _ := os.ReadFile(dlog)
		return strings.Contains(string(data), "DHCP, IP range")
	})
	var err error
	if l.log, err = os.Create(filepath.Join(dir, "daemon.log")); err != nil {
		t.Fatal(err)
	}
	l.startDaemon()
	t.Cleanup(func() {
		if l.daemon != nil {
			_ = l.daemon.Process.Signal(syscall.SIGTERM)
			_ = l.daemon.Wait()
		}
		l.log.Close()
		if t.Failed() {
			for _, f := range []string{"daemon.log", "dnsmasq.leases"} {
				data, _ := os.ReadFile(filepath.Join(dir, f))
				t.Logf("--- %s:\n%s", f, data)
			}
		}
	})
	plugin := `"type":"macvlan","master":"uplink","mode":"bridge"`
	if bridge {
		plugin = `"type":"bridge","bridge":"br-dhcp"`
	}
	l.list = r.Conflist(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"dhcp-net","plugins":[
		{%s,"ipam":{"type":"dhcp","daemonSocketPath":%q}}]}`, plugin, l.sock))
	return l
}

func (l *dhcpLab) startDaemon() {
	l.t.Helper()
	cmd := l.r.Node.Command(testnet.Binary(l.t), "dhcp", "daemon", "-socketpath", l.sock,
		"-pidfile", filepath.Join(l.dir, "dhcp.pid"), "-leasefile", l.leases, "-timeout", "1s", "-resendtimeout", "8s")
	cmd.Stdout, cmd.Stderr = l.log, l.log
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start the dhcp daemon: %v", err)
	}
	l.daemon = cmd
	waitUntil(l.t, 10*time.Second, "the dhcp daemon's socket", func() bool {
		c, err := net.Dial("unix", l.sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// killDaemon SIGKILLs the daemon (it leaves its socket file behind).
func (l *dhcpLab) killDaemon() {
	_ = l.daemon.Process.Kill()
	_ = l.daemon.Wait()
	l.daemon = nil
}

// restartDaemon starts the daemon again if it was killed.
func (l *dhcpLab) restartDaemon(t *testing.T) {
	if l.daemon == nil {
		l.startDaemon()
	}
}

// daemonLeases is the probe of the daemon's lease file: one client ID
// (container/network/ifname) a line.
func (l *dhcpLab) daemonLeases(t testing.TB) (string, []string) {
	data, err := os.ReadFile(l.leases)
	if errors.Is(err, os.ErrNotExist) {
		return "dhcp-daemon", nil
	}
	var f struct {
		Leases []struct {
			ClientID string `json:"clientID"`
		} `json:"leases"`
	}
	if err == nil {
		err = json.Unmarshal(data, &f)
	}
	if err != nil {
		t.Fatalf("the dhcp daemon's lease file: %v", err)
	}
	var lines []string
	for _, r := range f.Leases {
		lines = append(lines, r.ClientID)
	}
	return "dhcp-daemon", lines
}

// daemonFiles is the probe of the daemon's lease directory: a daemon
// killed while it wrote its lease file must not leave a temporary file
// once it is started again.
func (l *dhcpLab) daemonFiles(t testing.TB) (string, []string) {
	entries, err := os.ReadDir(filepath.Dir(l.leases))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var lines []string
	for _, e := range entries {
		lines = append(lines, e.Name())
	}
	return "dhcp-daemon-files", lines
}

// serverLeases is the probe of dnsmasq's leases: address and client ID
// (expiry and MAC change with every renewal and pod).
func (l *dhcpLab) serverLeases(t testing.TB) (string, []string) {
	data, err := os.ReadFile(l.server)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 5 {
			lines = append(lines, f[2]+" "+f[4])
		}
	}
	return "dhcp-server", lines
}

// firewalldLab is Debian's firewalld running in a node's netns on a
// private system bus. The runtime's plugins get the bus in
// DBUS_SYSTEM_BUS_ADDRESS (Runtime.Env), so nothing else in the test
// process sees it.
type firewalldLab struct{ *testnet.Firewalld }

func startFirewalld(t *testing.T, r *testnet.Runtime) *firewalldLab {
	t.Helper()
	f := &firewalldLab{testnet.StartFirewalld(t, r.Node)}
	r.Env = append(r.Env, "DBUS_SYSTEM_BUS_ADDRESS="+f.Addr)
	return f
}

// zoneSources is the probe of firewalld's zones: "zone source" for every
// source of every active zone.
func (f *firewalldLab) zoneSources(t testing.TB) (string, []string) {
	var zones map[string]map[string][]string
	if err := f.Call("zone.getActiveZones", &zones); err != nil {
		t.Fatalf("firewalld getActiveZones: %v", err)
	}
	var lines []string
	for zone, m := range zones {
		for _, src := range m["sources"] {
			lines = append(lines, zone+" "+src)
		}
	}
	return "firewalld", lines
}

func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
