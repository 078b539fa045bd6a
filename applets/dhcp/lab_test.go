package dhcp_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/testnet"
)

// lab is a node with a DHCP server on its network: dnsmasq in a netns of
// its own ("server", 10.99.0.1 on srv0) cabled to the node's "uplink"
// veth. Pods attach with macvlan on uplink, or, in a bridge lab, with the
// bridge plugin (or a veth of plug's) on br-dhcp, of which uplink is then
// a port. The node has 10.99.0.2 on its side. The dhcp daemon runs in the
// node. Every path (sockets, pidfiles, lease files, logs) is in the
// test's temporary directory.
type lab struct {
	t      testing.TB
	r      *testnet.Runtime
	server *testnet.NS
	dir    string

	dnsmasqLeases string
	dnsmasqLog    string
	dnsmasq       *exec.Cmd

	sock      string // the daemon's socket
	pidfile   string
	leaseFile string // the daemon's lease records
	daemonLog string
	daemon    *exec.Cmd
}

const (
	serverIP = "10.99.0.1"
	nodeIP   = "10.99.0.2"
)

// newLab builds the network and starts dnsmasq with the given extra
// options (it always serves 10.99.0.100-200 for 2 minutes, the shortest
// lease dnsmasq gives, with router 10.99.0.1).
func newLab(t testing.TB, dnsmasqOpts ...string) *lab {
	return buildLab(t, true, dnsmasqOpts...)
}

// newMacvlanLab is a lab without the bridge, for macvlan pods.
func newMacvlanLab(t testing.TB, dnsmasqOpts ...string) *lab {
	return buildLab(t, false, dnsmasqOpts...)
}

func buildLab(t testing.TB, bridge bool, dnsmasqOpts ...string) *lab {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("dnsmasq not installed (Debian package dnsmasq-base; make test-deps installs it)")
	}
	r := testnet.NewRuntime(t)
	r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
	l := &lab{t: t, r: r, server: testnet.NewNS(t, "dhcpsrv"), dir: t.TempDir()}
	l.dnsmasqLeases = filepath.Join(l.dir, "dnsmasq.leases")
	l.dnsmasqLog = filepath.Join(l.dir, "dnsmasq.log")
	l.sock = filepath.Join(l.dir, "run", "dhcp.sock")
	l.pidfile = filepath.Join(l.dir, "dhcp.pid")
	l.leaseFile = filepath.Join(l.dir, "state", "leases.json")
	l.daemonLog = filepath.Join(l.dir, "daemon.log")

	n := r.Node
	n.MustRun("ip", "link", "add", "uplink", "type", "veth", "peer", "name", "srv0", "netns", l.server.Name)
	if bridge {
		n.MustRun("ip", "link", "add", "br-dhcp", "type", "bridge")
		n.MustRun("ip", "link", "set", "uplink", "master", "br-dhcp", "up")
		n.MustRun("ip", "addr", "add", nodeIP+"/24", "dev", "br-dhcp")
		n.MustRun("ip", "link", "set", "br-dhcp", "up")
	} else {
		n.MustRun("ip", "addr", "add", nodeIP+"/24", "dev", "uplink")
		n.MustRun("ip", "link", "set", "uplink", "up")
	}
	l.server.MustRun("ip", "addr", "add", serverIP+"/24", "dev", "srv0")
	l.server.MustRun("ip", "link", "set", "srv0", "up")

	args := []string{
		"--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--user=root", "--no-ping",
		"--interface=srv0", "--bind-interfaces",
		"--dhcp-range=10.99.0.100,10.99.0.200,255.255.255.0,2m",
		"--dhcp-leasefile=" + l.dnsmasqLeases,
		"--pid-file=" + filepath.Join(l.dir, "dnsmasq.pid"),
		"--log-dhcp", "--log-facility=" + l.dnsmasqLog,
		"--dhcp-option=option:router," + serverIP,
	}
	l.dnsmasq = l.server.Command("dnsmasq", append(args, dnsmasqOpts...)...)
	out, _ := os.Create(filepath.Join(l.dir, "dnsmasq.out"))
	l.dnsmasq.Stdout, l.dnsmasq.Stderr = out, out
	if err := l.dnsmasq.Start(); err != nil {
		t.Fatalf("start dnsmasq: %v", err)
	}
	t.Cleanup(func() {
		l.dnsmasq.Process.Signal(syscall.SIGTERM)
		l.dnsmasq.Wait()
		out.Close()
		if t.Failed() {
			for _, f := range []string{"dnsmasq.out", "dnsmasq.log", "daemon.log", "dnsmasq.leases"} {
				data, _ := os.ReadFile(filepath.Join(l.dir, f))
				t.Logf("--- %s:\n%s", f, tail(string(data), 60))
			}
		}
	})
	waitFor(t, 10*time.Second, "dnsmasq to start", func() bool {
		return strings.Contains(l.readLog(), "DHCP, IP range")
	})
	return l
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (l *lab) readLog() string {
	data, _ := os.ReadFile(l.dnsmasqLog)
	return string(data)
}

func (l *lab) serverLeases() string {
	data, _ := os.ReadFile(l.dnsmasqLeases)
	return string(data)
}

func (l *lab) readDaemonLog() string {
	data, _ := os.ReadFile(l.daemonLog)
	return string(data)
}

// startDaemon starts our dhcp daemon in the node with short timeouts.
func (l *lab) startDaemon(extra ...string) {
	l.t.Helper()
	args := append([]string{"dhcp", "daemon", "-socketpath", l.sock, "-pidfile", l.pidfile,
		"-leasefile", l.leaseFile, "-timeout", "1s", "-resendtimeout", "8s"}, extra...)
	l.startDaemonCmd(l.r.Node.Command(testnet.Binary(l.t), args...))
}

// startReferenceDaemon starts Debian's reference daemon instead.
func (l *lab) startReferenceDaemon() {
	l.t.Helper()
	ref := testnet.RequireReference(l.t, "dhcp")
	l.startDaemonCmd(l.r.Node.Command(ref, "daemon", "-socketpath", l.sock, "-pidfile", l.pidfile, "-timeout", "2s"))
}

func (l *lab) startDaemonCmd(cmd *exec.Cmd) {
	l.t.Helper()
	if err := os.MkdirAll(filepath.Dir(l.sock), 0o700); err != nil {
		l.t.Fatal(err)
	}
	out, err := os.OpenFile(l.daemonLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		l.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start daemon: %v", err)
	}
	l.daemon = cmd
	l.t.Cleanup(func() {
		l.stopDaemon()
		out.Close()
	})
	waitFor(l.t, 10*time.Second, "the daemon's socket", func() bool {
		c, err := net.Dial("unix", l.sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// stopDaemon sends SIGTERM and waits for the daemon to exit.
func (l *lab) stopDaemon() {
	if l.daemon == nil {
		return
	}
	l.daemon.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { l.daemon.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		l.daemon.Process.Kill()
		<-done
		l.t.Error("the daemon did not exit within 10s of SIGTERM")
	}
	l.daemon = nil
}

// macvlanList is a network of macvlan on uplink with dhcp IPAM.
func (l *lab) macvlanList(version, name, ipamExtra string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"macvlan","master":"uplink","mode":"bridge",
		"ipam":{"type":"dhcp","daemonSocketPath":%q%s}}]}`, version, name, l.sock, ipamExtra)
}

// useReferenceBridge puts the reference bridge first in CNI_PATH and our
// binary (dhcp included) after it. The reference bridge creates the pod's
// veth before it calls IPAM (dhcp needs the interface) and removes it
// before IPAM DEL (so the release cannot leave through it).
func (l *lab) useReferenceBridge() {
	l.t.Helper()
	ref := testnet.RequireReference(l.t, "bridge")
	dir := l.t.TempDir()
	if err := os.Symlink(ref, filepath.Join(dir, "bridge")); err != nil {
		l.t.Fatal(err)
	}
	l.r.SetPath(dir + ":" + l.r.BinDir)
}

// bridgeList is a network of the bridge plugin on br-dhcp with dhcp IPAM.
func (l *lab) bridgeList(version, name, ipamExtra string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"bridge","bridge":"br-dhcp",
		"ipam":{"type":"dhcp","daemonSocketPath":%q%s}}]}`, version, name, l.sock, ipamExtra)
}

// ipamList is a network whose only plugin is dhcp itself: the pod's
// interface must already exist (see plug). It shows the IPAM result as
// is, DNS included, and reaches every verb at every version.
func (l *lab) ipamList(version, name, ipamExtra string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"dhcp",
		"ipam":{"type":"dhcp","daemonSocketPath":%q%s}}]}`, version, name, l.sock, ipamExtra)
}

// plug cables a new veth from br-dhcp into pod as ifName and returns its MAC.
func (l *lab) plug(pod *testnet.NS, ifName string) string {
	l.t.Helper()
	host := "vh" + pod.Name[len(pod.Name)-8:]
	l.r.Node.MustRun("ip", "link", "add", host, "type", "veth", "peer", "name", ifName, "netns", pod.Name)
	l.r.Node.MustRun("ip", "link", "set", host, "master", "br-dhcp", "up")
	return macOf(l.t, pod, ifName)
}

func macOf(t testing.TB, pod *testnet.NS, ifName string) string {
	t.Helper()
	f := strings.Fields(pod.MustRun("ip", "-o", "link", "show", ifName))
	for i, w := range f {
		if w == "link/ether" && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Fatalf("no MAC for %s in %v", ifName, f)
	return ""
}

// count counts the dnsmasq log lines that contain every one of words.
func (l *lab) count(words ...string) int {
	n := 0
	for _, line := range strings.Split(l.readLog(), "\n") {
		all := true
		for _, w := range words {
			all = all && strings.Contains(line, w)
		}
		if all {
			n++
		}
	}
	return n
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
