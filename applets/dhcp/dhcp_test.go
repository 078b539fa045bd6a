package dhcp_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

func asCurrent(t *testing.T, res types.Result) *current.Result {
	t.Helper()
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatalf("convert result: %v", err)
	}
	return cur
}

// TestLease: a macvlan pod gets a lease from dnsmasq at every spec
// version, its address and default route are configured, it reaches the
// server, CHECK passes, and DEL releases the lease (dnsmasq's lease file
// loses it); a second DEL succeeds.
func TestLease(t *testing.T) {
	l := newMacvlanLab(t)
	l.StartDaemon()
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		list := l.R.Conflist(l.macvlanList(v, "dhcp-mv"+strings.ReplaceAll(v, ".", ""), ""))
		leaseCycle(t, l, list, v)
	})
}

// TestReferenceBridgeLease: the same with the reference bridge, which
// removes the pod's interface before it calls IPAM DEL: the release goes
// out from the daemon's network instead.
func TestReferenceBridgeLease(t *testing.T) {
	l := newLab(t)
	l.useReferenceBridge()
	l.StartDaemon()
	testnet.ForEachVersion(t, []string{"0.3.1", "1.0.0"}, func(t *testing.T, v string) {
		list := l.R.Conflist(l.bridgeList(v, "dhcp-br"+strings.ReplaceAll(v, ".", ""), ""))
		leaseCycle(t, l, list, v)
	})
}

// TestOurBridgeLease: the same with our bridge, which creates the pod's
// veth (and makes it a bridge port) before it calls IPAM ADD, so the
// daemon has an interface to ask from.
func TestOurBridgeLease(t *testing.T) {
	l := newLab(t)
	l.StartDaemon()
	testnet.ForEachVersion(t, []string{"0.3.1", "1.1.0"}, func(t *testing.T, v string) {
		list := l.R.Conflist(l.bridgeList(v, "dhcp-ourbr"+strings.ReplaceAll(v, ".", ""), ""))
		leaseCycle(t, l, list, v)
	})
}

func leaseCycle(t *testing.T, l *lab, list *libcni.NetworkConfigList, v string) {
	pod := l.R.Pod(t)
	a := l.R.Attach(pod, "eth0")
	res, err := l.R.Add(list, a)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	cur := asCurrent(t, res)
	if len(cur.IPs) != 1 || !strings.HasPrefix(cur.IPs[0].Address.String(), "10.99.0.") ||
		!strings.HasSuffix(cur.IPs[0].Address.String(), "/24") || cur.IPs[0].Gateway.String() != serverIP {
		t.Fatalf("result IPs = %v", cur.IPs)
	}
	addr := cur.IPs[0].Address.IP.String()
	if out := pod.MustRun("ip", "-o", "-4", "addr", "show", "eth0"); !strings.Contains(out, addr+"/24") {
		t.Fatalf("eth0 lacks %s: %s", addr, out)
	}
	if out := pod.MustRun("ip", "route", "show", "default"); !strings.Contains(out, "via "+serverIP) {
		t.Fatalf("no default route via %s: %s", serverIP, out)
	}
	if err := pod.Ping(serverIP); err != nil {
		t.Fatalf("ping the server: %v", err)
	}
	mac := macOf(t, pod, "eth0")
	if !strings.Contains(l.serverLeases(), mac) {
		t.Fatalf("dnsmasq has no lease for %s:\n%s", mac, l.serverLeases())
	}
	if cni.VersionAtLeast(v, "0.4.0") {
		if err := l.R.Check(list, a); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
	}
	if cni.VersionAtLeast(v, "1.1.0") {
		if err := l.R.Status(list); err != nil {
			t.Fatalf("STATUS: %v", err)
		}
	}
	if err := l.R.Del(list, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	testnet.WaitFor(t, 5*time.Second, "dnsmasq to drop the released lease", func() bool {
		return !strings.Contains(l.serverLeases(), mac)
	})
	if n := l.count("DHCPRELEASE", mac); n != 1 {
		t.Errorf("dnsmasq saw %d DHCPRELEASE from %s, want 1", n, mac)
	}
	if err := l.R.Del(list, a); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
}

// TestResult: the IPAM result as the daemon builds it, at every spec
// version: DNS from options 6 and 15, routes from option 121 with scope
// link for a 0.0.0.0 router, and priority as the metric of every route.
func TestResult(t *testing.T) {
	l := newLab(t,
		"--dhcp-option=option:dns-server,10.99.0.53,10.99.0.54",
		"--dhcp-option=option:domain-name,pods.example",
		"--dhcp-option=option:classless-static-route,192.168.7.0/24,10.99.0.9,10.77.0.0/16,0.0.0.0,0.0.0.0/0,"+serverIP,
	)
	l.StartDaemon()
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		list := l.R.Conflist(l.ipamList(v, "dhcp-res"+strings.ReplaceAll(v, ".", ""), `,"priority":30`))
		pod := l.R.Pod(t)
		l.plug(pod, "eth0")
		a := l.R.Attach(pod, "eth0")
		res, err := l.R.Add(list, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		cur := asCurrent(t, res)
		if got := cur.DNS.Nameservers; strings.Join(got, ",") != "10.99.0.53,10.99.0.54" {
			t.Errorf("DNS nameservers = %v", got)
		}
		if cur.DNS.Domain != "pods.example" {
			t.Errorf("DNS domain = %q", cur.DNS.Domain)
		}
		var routes []string
		for _, r := range cur.Routes {
			routes = append(routes, fmt.Sprintf("%s via %s", r.Dst.String(), r.GW))
			if cni.VersionAtLeast(v, "1.0.0") && r.Priority != 30 {
				t.Errorf("route %s has priority %d, want 30", r.Dst.String(), r.Priority)
			}
		}
		want := "192.168.7.0/24 via 10.99.0.9,10.77.0.0/16 via <nil>,0.0.0.0/0 via " + serverIP
		if strings.Join(routes, ",") != want {
			t.Errorf("routes = %v, want %s", routes, want)
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			for _, r := range cur.Routes {
				if r.Dst.String() == "10.77.0.0/16" && (r.Scope == nil || *r.Scope != 253) {
					t.Errorf("route 10.77.0.0/16 via 0.0.0.0: scope = %v, want link (253)", r.Scope)
				}
			}
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := l.R.Check(list, a); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := l.R.Status(list); err != nil {
				t.Fatalf("STATUS: %v", err)
			}
		}
		if err := l.R.Del(list, a); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	})
}

// TestStaticRoutes: without option 121, option 33 plus the default route.
func TestStaticRoutes(t *testing.T) {
	l := newLab(t, "--dhcp-option=option:static-route,192.168.9.0,10.99.0.9")
	l.StartDaemon()
	list := l.R.Conflist(l.ipamList("1.1.0", "dhcp-static", ""))
	pod := l.R.Pod(t)
	l.plug(pod, "eth0")
	a := l.R.Attach(pod, "eth0")
	res, err := l.R.Add(list, a)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	var routes []string
	for _, r := range asCurrent(t, res).Routes {
		routes = append(routes, r.Dst.String()+" via "+r.GW.String())
	}
	if want := "192.168.9.0/24 via 10.99.0.9,0.0.0.0/0 via " + serverIP; strings.Join(routes, ",") != want {
		t.Errorf("routes = %v, want %s", routes, want)
	}
}

// TestRenewAndRestart: with T1 at 3 s the daemon renews (a unicast
// REQUEST), a restart of the daemon in the middle of the lease resumes
// it from the lease file, and maintenance stops when the pod is gone.
func TestRenewAndRestart(t *testing.T) {
	l := newMacvlanLab(t, "--dhcp-option=option:T1,3", "--dhcp-option=option:T2,100")
	l.StartDaemon()
	list := l.R.Conflist(l.macvlanList("1.1.0", "dhcp-renew", ""))
	pod := l.R.Pod(t)
	a := l.R.Attach(pod, "eth0")
	if _, err := l.R.Add(list, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	mac := macOf(t, pod, "eth0")
	testnet.WaitFor(t, 10*time.Second, "a renewal", func() bool {
		return l.count("DHCPREQUEST", mac) >= 2 && strings.Contains(l.readDaemonLog(), "renew:")
	})

	st, err := os.Stat(l.LeaseFile)
	if err != nil {
		t.Fatalf("lease file: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("lease file mode %v, want 0600", st.Mode().Perm())
	}
	if st, err := os.Stat(l.Sock); err != nil || st.Mode().Perm() != 0o660 {
		t.Errorf("socket: %v, mode %v, want 0660", err, st.Mode().Perm())
	}

	// A second pod, deleted while the daemon is down.
	gone := l.R.Pod(t)
	ga := l.R.Attach(gone, "eth0")
	if _, err := l.R.Add(list, ga); err != nil {
		t.Fatalf("ADD of the second pod: %v", err)
	}

	l.StopDaemon()
	gone.Delete()
	for _, f := range []string{l.Sock, l.Pidfile} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s still exists after SIGTERM (%v)", f, err)
		}
	}
	before := l.count("DHCPREQUEST", mac)
	time.Sleep(4 * time.Second) // past the next T1 with no daemon
	l.StartDaemon()
	testnet.WaitFor(t, 2*time.Second, "the restarted daemon to drop the lease of a pod deleted meanwhile", func() bool {
		data, _ := os.ReadFile(l.LeaseFile)
		return !strings.Contains(string(data), ga.ContainerID)
	})
	testnet.WaitFor(t, 10*time.Second, "a renewal after the restart", func() bool { return l.count("DHCPREQUEST", mac) > before })
	if err := l.R.Check(list, a); err != nil {
		t.Fatalf("CHECK after restart: %v", err)
	}

	// The pod vanishes without a DEL: the daemon stops renewing.
	pod.Delete()
	testnet.WaitFor(t, 10*time.Second, "the daemon to drop the lease of a vanished pod", func() bool {
		data, _ := os.ReadFile(l.LeaseFile)
		return !strings.Contains(string(data), a.ContainerID)
	})
	if err := l.R.Del(list, a); err != nil {
		t.Fatalf("DEL of the vanished pod: %v", err)
	}
}

// TestIPAMKeys: request with skipDefault, provide with value and fromArg.
func TestIPAMKeys(t *testing.T) {
	l := newLab(t)
	l.StartDaemon()
	list := l.R.Conflist(l.ipamList("1.1.0", "dhcp-keys", `,
		"request":[{"skipDefault":true},{"option":"subnet-mask"},{"option":"routers"},{"option":"42"}],
		"provide":[{"option":"host-name","fromArg":"K8S_POD_NAME"},{"option":"user-class","value":"cnibox-test"}]`))
	pod := l.R.Pod(t)
	mac := l.plug(pod, "eth0")
	a := l.R.Attach(pod, "eth0")
	a.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAME", "web-0"}}
	if _, err := l.R.Add(list, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	log := l.readLog()
	if !strings.Contains(log, "requested options: 1:netmask, 3:router, 42:ntp-server") ||
		strings.Contains(log, "6:dns-server") {
		t.Errorf("dnsmasq did not see exactly the requested options:\n%s", log)
	}
	if !strings.Contains(log, "client provides name: web-0") {
		t.Errorf("dnsmasq did not get host-name from K8S_POD_NAME:\n%s", log)
	}
	if !strings.Contains(log, "cnibox-test") {
		t.Errorf("dnsmasq did not get the user class:\n%s", log)
	}
	id := a.ContainerID + "/dhcp-keys/eth0"
	if !strings.Contains(l.serverLeases(), mac) || !strings.Contains(l.serverLeases(), hexColon(id)) {
		t.Errorf("dnsmasq lease lacks MAC %s or client id %q:\n%s", mac, id, l.serverLeases())
	}
	if err := l.R.Del(list, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

// hexColon is a client id as dnsmasq's lease file shows it (type 0 first).
func hexColon(s string) string {
	parts := []string{"00"}
	for _, b := range []byte(s) {
		parts = append(parts, fmt.Sprintf("%02x", b))
	}
	return strings.Join(parts, ":")
}

// TestGC releases the leases whose attachment is not valid any more.
func TestGC(t *testing.T) {
	l := newLab(t)
	l.StartDaemon()
	list := l.R.Conflist(l.ipamList("1.1.0", "dhcp-gc", ""))
	keep, drop := l.R.Pod(t), l.R.Pod(t)
	keepMAC, dropMAC := l.plug(keep, "eth0"), l.plug(drop, "eth0")
	ka, da := l.R.Attach(keep, "eth0"), l.R.Attach(drop, "eth0")
	for _, a := range []*testnet.Attachment{ka, da} {
		if _, err := l.R.Add(list, a); err != nil {
			t.Fatalf("ADD: %v", err)
		}
	}
	if err := l.R.GC(list, ka); err != nil {
		t.Fatalf("GC: %v", err)
	}
	testnet.WaitFor(t, 5*time.Second, "dnsmasq to drop the collected lease", func() bool {
		return !strings.Contains(l.serverLeases(), dropMAC)
	})
	if !strings.Contains(l.serverLeases(), keepMAC) {
		t.Errorf("GC released the valid attachment's lease too:\n%s", l.serverLeases())
	}
	if err := l.R.Check(list, ka); err != nil {
		t.Errorf("CHECK of the kept attachment: %v", err)
	}
	if err := l.R.Check(list, da); err == nil {
		t.Errorf("CHECK of the collected attachment passed")
	}
}

// TestCheckTakesNoLease: CHECK of an attachment without a lease fails and
// does not get one (the reference's CHECK does).
func TestCheckTakesNoLease(t *testing.T) {
	l := newLab(t)
	l.StartDaemon()
	pod := l.R.Pod(t)
	mac := l.plug(pod, "eth0")
	conf := []byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"dhcp-chk","type":"dhcp",
		"ipam":{"type":"dhcp","daemonSocketPath":%q}}`, l.Sock))
	out, _, code := l.R.Exec("dhcp", env("CHECK", pod.Path, "c-check", l.R.BinDir), conf)
	if code == 0 {
		t.Fatalf("CHECK without a lease succeeded: %s", out)
	}
	if e := testnet.ParseError(t, out); !strings.Contains(e.Msg, "no lease") {
		t.Errorf("CHECK error = %q, want it to say there is no lease", e.Msg)
	}
	if n := l.count("DHCPDISCOVER", mac); n != 0 {
		t.Errorf("CHECK sent %d DISCOVERs", n)
	}
}

func env(cmd, netns, id, path string) []string {
	return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns, "CNI_IFNAME=eth0", "CNI_PATH=" + path}
}

// TestBroadcast: with -broadcast the DISCOVER and REQUEST ask the server
// to broadcast its answers, and the lease still comes through.
func TestBroadcast(t *testing.T) {
	l := newLab(t)
	l.StartDaemon("-broadcast")
	list := l.R.Conflist(l.ipamList("1.1.0", "dhcp-bcast", ""))
	pod := l.R.Pod(t)
	l.plug(pod, "eth0")
	if _, err := l.R.Add(list, l.R.Attach(pod, "eth0")); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if !strings.Contains(l.readLog(), "broadcast response") {
		t.Errorf("dnsmasq did not broadcast its answers:\n%s", l.readLog())
	}
}

// TestErrors: bad configuration and an unreachable daemon give CNI
// errors with the right code and a message that says what is wrong.
func TestErrors(t *testing.T) {
	r := testnet.NewRuntime(t)
	pod := r.Pod(t)
	sock := t.TempDir() + "/nobody.sock"
	conf := func(ipam string) []byte {
		return []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"dhcp-err","type":"dhcp",
			"ipam":{"type":"dhcp","daemonSocketPath":%q%s}}`, sock, ipam))
	}
	for _, tc := range []struct {
		cmd, ipam string
		code      uint
		msg       string
	}{
		{"ADD", `,"request":[{"option":"no-such-option"}]`, 7, "ipam.request[0].option"},
		{"ADD", `,"provide":[{"option":"host-name"}]`, 7, "ipam.provide[0]"},
		{"ADD", `,"provide":[{"option":"300","value":"x"}]`, 7, "ipam.provide[0].option"},
		{"ADD", `,"priority":-1`, 7, "ipam.priority"},
		{"ADD", `,"priority":"high"`, 7, "priority"},
		{"ADD", ``, 11, "cannot reach the dhcp daemon at " + sock},
		{"CHECK", ``, 11, "cannot reach the dhcp daemon"},
		{"STATUS", ``, 50, "cannot reach the dhcp daemon at " + sock},
	} {
		out, _, code := r.Exec("dhcp", env(tc.cmd, pod.Path, "c-err", r.BinDir), conf(tc.ipam))
		if code == 0 {
			t.Errorf("%s %s succeeded: %s", tc.cmd, tc.ipam, out)
			continue
		}
		e := testnet.ParseError(t, out)
		if e.Code != tc.code || !strings.Contains(e.Msg, tc.msg) {
			t.Errorf("%s %s: error %d %q, want %d containing %q", tc.cmd, tc.ipam, e.Code, e.Msg, tc.code, tc.msg)
		}
	}
	// ADD into a netns that does not exist is "unknown container".
	out, _, code := r.Exec("dhcp", env("ADD", "/run/netns/cnibox-no-such-pod", "c-err", r.BinDir), conf(""))
	if e := testnet.ParseError(t, out); code == 0 || e.Code != 3 {
		t.Errorf("ADD into a missing netns: exit %d, error %+v, want code 3", code, e)
	}
	// DEL has nothing to release when no daemon holds a lease.
	if out, _, code := r.Exec("dhcp", env("DEL", pod.Path, "c-err", r.BinDir), conf("")); code != 0 {
		t.Errorf("DEL without a daemon: exit %d: %s", code, out)
	}
}

// TestDaemonFlags: bad flags are refused, an occupied socket is not
// stolen.
func TestDaemonFlags(t *testing.T) {
	l := newLab(t)
	l.StartDaemon()
	out, err := l.R.Node.Command(testnet.Binary(t), "dhcp", "daemon", "-socketpath", l.Sock, "-leasefile", "").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "already serving") {
		t.Errorf("a second daemon on the same socket: %v: %s", err, out)
	}
	out, err = l.R.Node.Command(testnet.Binary(t), "dhcp", "daemon", "-pidfile", "relative.pid").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "absolute") {
		t.Errorf("relative -pidfile: %v: %s", err, out)
	}
	st, err := os.Stat(l.Sock[:strings.LastIndex(l.Sock, "/")])
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("socket directory: %v, mode %v, want 0700", err, st.Mode().Perm())
	}
	data, _ := os.ReadFile(l.Pidfile)
	if strings.TrimSpace(string(data)) != fmt.Sprint(l.Daemon.Process.Pid) {
		t.Errorf("pidfile has %q, want %d", data, l.Daemon.Process.Pid)
	}
}

// TestOurPluginReferenceDaemon: our plugin (under our macvlan) against
// Debian's reference daemon.
func TestOurPluginReferenceDaemon(t *testing.T) {
	l := newMacvlanLab(t)
	l.startReferenceDaemon()
	list := l.R.Conflist(l.macvlanList("1.1.0", "dhcp-refd", ""))
	pod := l.R.Pod(t)
	a := l.R.Attach(pod, "eth0")
	res, err := l.R.Add(list, a)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	cur := asCurrent(t, res)
	if len(cur.IPs) != 1 || cur.IPs[0].Gateway.String() != serverIP {
		t.Fatalf("result = %+v", cur)
	}
	if err := pod.Ping(serverIP); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if err := l.R.Check(list, a); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := l.R.Status(list); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	if err := l.R.GC(list, a); err != nil {
		t.Fatalf("GC: %v", err)
	}
	// (dnsmasq never sees a DHCPRELEASE from the reference daemon v1.1.1,
	// so the lease file is not checked here.)
	if err := l.R.Del(list, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

// TestReferencePluginOurDaemon: Debian's reference bridge and dhcp plugin
// against our daemon.
func TestReferencePluginOurDaemon(t *testing.T) {
	l := newLab(t)
	testnet.RequireReference(t, "dhcp")
	l.StartDaemon()
	l.R.SetPath(testnet.ReferenceDir())
	list := l.R.Conflist(l.bridgeList("1.0.0", "dhcp-refp", ""))
	pod := l.R.Pod(t)
	a := l.R.Attach(pod, "eth0")
	res, err := l.R.Add(list, a)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	cur := asCurrent(t, res)
	if len(cur.IPs) != 1 || cur.IPs[0].Gateway.String() != serverIP || len(cur.Routes) != 1 {
		t.Fatalf("result = %s", mustJSON(cur))
	}
	if err := pod.Ping(serverIP); err != nil {
		t.Fatalf("ping: %v", err)
	}
	mac := macOf(t, pod, "eth0")
	if err := l.R.Check(list, a); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := l.R.Del(list, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	testnet.WaitFor(t, 5*time.Second, "dnsmasq to drop the released lease", func() bool {
		return !strings.Contains(l.serverLeases(), mac)
	})
}

func mustJSON(v any) string {
	data, _ := json.Marshal(v)
	return string(data)
}

// TestSocketActivation: started as systemd starts it, with the socket
// passed as fd 3 (LISTEN_PID, LISTEN_FDS), the daemon serves on it, and
// leaves the socket file to systemd on exit.
func TestSocketActivation(t *testing.T) {
	l := newMacvlanLab(t)
	if err := os.MkdirAll(filepath.Dir(l.Sock), 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", l.Sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	f, err := ln.(*net.UnixListener).File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	defer f.Close()
	cmd := l.R.Node.Command("sh", "-c", `export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@"`, testnet.Binary(t),
		"dhcp", "daemon", "-socketpath", filepath.Join(l.Dir, "unused", "dhcp.sock"), "-leasefile", l.LeaseFile, "-timeout", "1s")
	cmd.ExtraFiles = []*os.File{f}
	l.StartDaemonCmd(cmd)
	list := l.R.Conflist(l.macvlanList("1.1.0", "dhcp-sa", ""))
	pod := l.R.Pod(t)
	a := l.R.Attach(pod, "eth0")
	if _, err := l.R.Add(list, a); err != nil {
		t.Fatalf("ADD through the activated socket: %v", err)
	}
	if err := l.R.Del(list, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if !strings.Contains(l.readDaemonLog(), "socket activation") {
		t.Errorf("the daemon did not say it took the passed socket:\n%s", l.readDaemonLog())
	}
	if _, err := os.Stat(filepath.Join(l.Dir, "unused")); !os.IsNotExist(err) {
		t.Errorf("the daemon made its own socket directory: %v", err)
	}
	l.StopDaemon()
	if _, err := os.Stat(l.Sock); err != nil {
		t.Errorf("the daemon removed systemd's socket: %v", err)
	}
}

// TestNoServer: with no DHCP server answering, ADD fails after
// -resendtimeout with an error that says so, macvlan rolls back, and the
// daemon keeps no lease.
func TestNoServer(t *testing.T) {
	l := newMacvlanLab(t)
	l.Server.MustRun("ip", "link", "set", "srv0", "down")
	l.StartDaemon("-resendtimeout", "3s")
	list := l.R.Conflist(l.macvlanList("1.1.0", "dhcp-none", ""))
	pod := l.R.Pod(t)
	a := l.R.Attach(pod, "eth0")
	_, err := l.R.Add(list, a)
	if err == nil || !strings.Contains(err.Error(), "no DHCP lease on eth0") {
		t.Fatalf("ADD with no server: %v", err)
	}
	if out, err := pod.Run("ip", "link", "show", "eth0"); err == nil {
		t.Errorf("eth0 left behind: %s", out)
	}
	data, _ := os.ReadFile(l.LeaseFile)
	if strings.Contains(string(data), a.ContainerID) {
		t.Errorf("the daemon recorded a lease: %s", data)
	}
	if err := l.R.Del(list, a); err != nil {
		t.Fatalf("DEL after the failed ADD: %v", err)
	}
}

// TestRebind: when the server drops unicast (so renewals at T1 go
// unanswered), the daemon rebinds at T2 with a broadcast REQUEST.
func TestRebind(t *testing.T) {
	l := newMacvlanLab(t, "--dhcp-option=option:T1,3", "--dhcp-option=option:T2,6")
	l.Server.MustRun("iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", "67",
		"-m", "pkttype", "--pkt-type", "unicast", "-j", "DROP")
	l.StartDaemon()
	list := l.R.Conflist(l.macvlanList("1.1.0", "dhcp-rebind", ""))
	pod := l.R.Pod(t)
	a := l.R.Attach(pod, "eth0")
	if _, err := l.R.Add(list, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	testnet.WaitFor(t, 15*time.Second, "a rebind", func() bool {
		return strings.Contains(l.readDaemonLog(), "rebind: ")
	})
	log := l.readDaemonLog()
	if !strings.Contains(log, "renew lease on") {
		t.Errorf("no failed renewal before the rebind:\n%s", log)
	}
	if err := l.R.Check(list, a); err != nil {
		t.Fatalf("CHECK after the rebind: %v", err)
	}
}

// TestHostPrefix: a daemon started with -hostprefix (as in a container
// that mounts the host's root there) puts its socket under the prefix and
// opens CNI_NETNS under it. Here the netns path under the prefix leads to
// another pod than the same path outside it: only the one under the
// prefix has the interface.
func TestHostPrefix(t *testing.T) {
	l := newLab(t)
	prefix := t.TempDir()
	outside, inside := l.R.Pod(t), l.R.Pod(t)
	l.plug(inside, "eth0")
	if err := os.MkdirAll(filepath.Join(prefix, filepath.Dir(outside.Path)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(inside.Path, filepath.Join(prefix, outside.Path)); err != nil {
		t.Fatal(err)
	}
	l.Sock = filepath.Join(prefix, "dhcp.sock")
	l.StartDaemonCmd(l.R.Node.Command(testnet.Binary(t), "dhcp", "daemon", "-hostprefix", prefix,
		"-socketpath", "/dhcp.sock", "-leasefile", l.LeaseFile, "-timeout", "1s"))
	conf := []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"dhcp-prefix","type":"dhcp",
		"ipam":{"type":"dhcp","daemonSocketPath":%q}}`, l.Sock))
	out, _, code := l.R.Exec("dhcp", env("ADD", outside.Path, "c-prefix", l.R.BinDir), conf)
	if code != 0 || !strings.Contains(string(out), "10.99.0.") {
		t.Fatalf("ADD through -hostprefix: exit %d: %s", code, out)
	}
	if out, _, code := l.R.Exec("dhcp", env("DEL", outside.Path, "c-prefix", l.R.BinDir), conf); code != 0 {
		t.Fatalf("DEL: exit %d: %s", code, out)
	}
	testnet.WaitFor(t, 5*time.Second, "a DHCPRELEASE", func() bool { return l.count("DHCPRELEASE") == 1 })
}

// BenchmarkAddDel: one ADD and one DEL of the dhcp plugin (exec'd as a
// runtime does) against dnsmasq, with our daemon and with the reference
// daemon: the RPC, the DORA in the pod's netns and the release.
func BenchmarkAddDel(b *testing.B) {
	for _, daemon := range []string{"cnibox", "reference"} {
		b.Run("daemon="+daemon, func(b *testing.B) {
			l := newLab(b)
			if daemon == "cnibox" {
				l.StartDaemon()
			} else {
				l.startReferenceDaemon()
			}
			pod := l.R.Pod(b)
			l.plug(pod, "eth0")
			conf := []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"dhcp-bench","type":"dhcp",
				"ipam":{"type":"dhcp","daemonSocketPath":%q}}`, l.Sock))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if out, _, code := l.R.Exec("dhcp", env("ADD", pod.Path, "c-bench", l.R.BinDir), conf); code != 0 {
					b.Fatalf("ADD: %s", out)
				}
				if out, _, code := l.R.Exec("dhcp", env("DEL", pod.Path, "c-bench", l.R.BinDir), conf); code != 0 {
					b.Fatalf("DEL: %s", out)
				}
			}
		})
	}
}

// TestLostACK: the server commits a lease on REQUEST, and its ACK is
// lost (here dropped on its way out; in a crash test, the pod's interface
// was deleted by the runtime's DEL while a killed ADD's allocation still
// ran). The daemon gives up, and releases the address it asked for, so
// the server does not keep it for a client that has none.
func TestLostACK(t *testing.T) {
	l := newMacvlanLab(t)
	// DHCPACK: option 53 (message type) = 5, the first option dnsmasq puts,
	// 248 bytes into the UDP header (8 + 236 of BOOTP + the magic cookie).
	l.Server.MustRun("nft", "add table inet lossy")
	l.Server.MustRun("nft", "add chain inet lossy out { type filter hook output priority 0 ; }")
	l.Server.MustRun("nft", "add rule inet lossy out udp sport 67 @th,1984,24 0x350105 drop")
	l.StartDaemon("-resendtimeout", "3s")
	list := l.R.Conflist(l.macvlanList("1.1.0", "dhcp-lost", ""))
	a := l.R.Attach(l.R.Pod(t), "eth0")
	if _, err := l.R.Add(list, a); err == nil {
		t.Fatal("ADD succeeded without an ACK")
	}
	if l.count("DHCPACK") == 0 {
		t.Fatalf("dnsmasq sent no ACK:\n%s", l.readLog())
	}
	id := hexColon(a.ContainerID + "/dhcp-lost/eth0")
	testnet.WaitFor(t, 5*time.Second, "dnsmasq to drop the lease the daemon asked for and gave up", func() bool {
		return !strings.Contains(l.serverLeases(), id)
	})
	if err := l.R.Del(list, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}
