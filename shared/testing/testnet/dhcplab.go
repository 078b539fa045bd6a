package testnet

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DHCPLab is a node with a DHCP server on its network: dnsmasq in a netns
// of its own (Server, host .1 of the lab's /24 on srv0) cabled to the
// node's "uplink" veth. The node has host .2 on uplink or, in a bridge
// lab, on br-dhcp, of which uplink is then a port. dnsmasq serves hosts
// .100-.200 for 2 minutes (the shortest lease it gives) with router .1.
// The dhcp daemon runs in the node. Every path (sockets, pidfiles, lease
// files, logs) is in the test's temporary directory Dir.
type DHCPLab struct {
	R      *Runtime
	Server *NS
	Dir    string

	DnsmasqLeases string
	DnsmasqLog    string
	Dnsmasq       *exec.Cmd

	Sock      string // the daemon's socket
	Pidfile   string
	LeaseFile string // the daemon's lease records
	DaemonLog string
	Daemon    *exec.Cmd

	t testing.TB
}

// NewDHCPLab builds the lab's network on r's node for the /24 subnet
// and starts dnsmasq with the given extra options. It skips the test
// when dnsmasq is not installed.
func NewDHCPLab(t testing.TB, r *Runtime, subnet string, bridge bool, dnsmasqOpts ...string) *DHCPLab {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("dnsmasq not installed (Debian package dnsmasq-base; make test-deps installs it)")
	}
	base := netip.MustParsePrefix(subnet).Masked().Addr().As4()
	host := func(n byte) string { a := base; a[3] = n; return netip.AddrFrom4(a).String() }
	l := &DHCPLab{t: t, R: r, Server: NewNS(t, "dhcpsrv"), Dir: t.TempDir()}
	l.DnsmasqLeases = filepath.Join(l.Dir, "dnsmasq.leases")
	l.DnsmasqLog = filepath.Join(l.Dir, "dnsmasq.log")
	l.Sock = filepath.Join(l.Dir, "run", "dhcp.sock")
	l.Pidfile = filepath.Join(l.Dir, "dhcp.pid")
	l.LeaseFile = filepath.Join(l.Dir, "state", "leases.json")
	l.DaemonLog = filepath.Join(l.Dir, "daemon.log")

	n := r.Node
	n.MustRun("ip", "link", "add", "uplink", "type", "veth", "peer", "name", "srv0", "netns", l.Server.Name)
	if bridge {
		n.MustRun("ip", "link", "add", "br-dhcp", "type", "bridge")
		n.MustRun("ip", "link", "set", "uplink", "master", "br-dhcp", "up")
		n.MustRun("ip", "addr", "add", host(2)+"/24", "dev", "br-dhcp")
		n.MustRun("ip", "link", "set", "br-dhcp", "up")
	} else {
		n.MustRun("ip", "addr", "add", host(2)+"/24", "dev", "uplink")
		n.MustRun("ip", "link", "set", "uplink", "up")
	}
	l.Server.MustRun("ip", "addr", "add", host(1)+"/24", "dev", "srv0")
	l.Server.MustRun("ip", "link", "set", "srv0", "up")

	args := []string{
		"--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--user=root", "--no-ping",
		"--interface=srv0", "--bind-interfaces",
		"--dhcp-range=" + host(100) + "," + host(200) + ",255.255.255.0,2m",
		"--dhcp-leasefile=" + l.DnsmasqLeases,
		"--pid-file=" + filepath.Join(l.Dir, "dnsmasq.pid"),
		"--log-dhcp", "--log-facility=" + l.DnsmasqLog,
		"--dhcp-option=option:router," + host(1),
	}
	l.Dnsmasq = l.Server.Command("dnsmasq", append(args, dnsmasqOpts...)...)
	out, _ := os.Create(filepath.Join(l.Dir, "dnsmasq.out"))
	l.Dnsmasq.Stdout, l.Dnsmasq.Stderr = out, out
	if err := l.Dnsmasq.Start(); err != nil {
		t.Fatalf("start dnsmasq: %v", err)
	}
	t.Cleanup(func() {
		_ = l.Dnsmasq.Process.Signal(syscall.SIGTERM)
		_ = l.Dnsmasq.Wait()
		out.Close()
		if t.Failed() {
			for _, f := range []string{"dnsmasq.out", "dnsmasq.log", "daemon.log", "dnsmasq.leases"} {
				data, _ := os.ReadFile(filepath.Join(l.Dir, f))
				t.Logf("--- %s:\n%s", f, tail(string(data), 60))
			}
		}
	})
	WaitFor(t, 10*time.Second, "dnsmasq to start", func() bool {
		data, _ := os.ReadFile(l.DnsmasqLog)
		return strings.Contains(string(data), "DHCP, IP range")
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

// StartDaemon starts cnibox's dhcp daemon in the node with short timeouts
// and extra arguments.
func (l *DHCPLab) StartDaemon(extra ...string) {
	l.t.Helper()
	args := append([]string{"dhcp", "daemon", "-socketpath", l.Sock, "-pidfile", l.Pidfile,
		"-leasefile", l.LeaseFile, "-timeout", "1s", "-resendtimeout", "8s"}, extra...)
	l.StartDaemonCmd(l.R.Node.Command(Binary(l.t), args...))
}

// StartDaemonCmd starts a daemon command (logging to DaemonLog) and waits
// for its socket; it is stopped when the test ends.
func (l *DHCPLab) StartDaemonCmd(cmd *exec.Cmd) {
	l.t.Helper()
	if err := os.MkdirAll(filepath.Dir(l.Sock), 0o700); err != nil {
		l.t.Fatal(err)
	}
	out, err := os.OpenFile(l.DaemonLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		l.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start daemon: %v", err)
	}
	l.Daemon = cmd
	l.t.Cleanup(func() {
		l.StopDaemon()
		out.Close()
	})
	WaitFor(l.t, 10*time.Second, "the daemon's socket", func() bool {
		c, err := net.Dial("unix", l.Sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// StopDaemon sends SIGTERM and waits for the daemon to exit.
func (l *DHCPLab) StopDaemon() {
	if l.Daemon == nil {
		return
	}
	_ = l.Daemon.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = l.Daemon.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = l.Daemon.Process.Kill()
		<-done
		l.t.Error("the daemon did not exit within 10s of SIGTERM")
	}
	l.Daemon = nil
}

// KillDaemon SIGKILLs the daemon (it leaves its socket file behind).
func (l *DHCPLab) KillDaemon() {
	_ = l.Daemon.Process.Kill()
	_ = l.Daemon.Wait()
	l.Daemon = nil
}

// WaitFor waits until cond holds, failing the test after timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
