package conformance

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// env is what one run's fixtures made: the runtime, the pod, and the
// netns beyond the node when there is one.
type env struct {
	r       *testnet.Runtime
	pod     *testnet.NS
	outside *testnet.NS
	// named are the sysctl paths the case names (namedSysctls).
	named []string
}

// fixture prepares one "node" entry of a case, identically on every side.
// side is the plugin directory of the run's first step (the dhcp daemon
// is a plugin too: the side that ADDs runs it).
type fixture func(t *testing.T, e *env, c *Case, side string)

// fixtures is the vocabulary of the corpus's "node" field. The order in
// which a case lists them does not matter: they run in fixtureOrder.
var fixtures = map[string]fixture{
	// uplink: an "eth0" in the node, cabled (veth) to an outside netns
	// ("wan", 10.99.0.1/24); the node has 10.99.0.2/24 and a default
	// route via .1. It is the master of macvlan, ipvlan and vlan cases.
	"uplink": uplink,
	// device: a veth "dev0" in the node for host-device, its peer in a
	// netns of its own so that the node holds only dev0.
	"device": func(t *testing.T, e *env, c *Case, side string) {
		peer := testnet.NewNS(t, "devpeer")
		e.r.Node.MustRun("ip", "link", "add", "dev0", "type", "veth", "peer", "name", "dev0p", "netns", peer.Name)
	},
	// dhcp: the uplink, dnsmasq in the outside netns serving
	// 10.99.0.100-200 (router .1), and the dhcp daemon of the ADDing side
	// in the node, listening where plugins look (/run/cni/dhcp.sock).
	"dhcp": func(t *testing.T, e *env, c *Case, side string) {
		uplink(t, e, c, side)
		startDHCP(t, e, side)
	},
	// pod-veth: what a third-party main plugin made before a meta plugin
	// runs alone: a veth whose pod end is CNI_IFNAME with the prevResult's
	// pod addresses and routes, and whose host end is named as the
	// prevResult's host interface (or "veth0").
	"pod-veth": podVeth,
	// kube-proxy: the nat chain KUBE-MARK-MASQ (mark 0x4000) that
	// kube-proxy makes in both families, which portmap's
	// externalSetMarkChain and the no-kube-proxy docs' configs jump to.
	"kube-proxy": func(t *testing.T, e *env, c *Case, side string) {
		for _, tool := range []string{"iptables", "ip6tables"} {
			e.r.Node.MustRun(tool, "-w", "-t", "nat", "-N", "KUBE-MARK-MASQ")
			e.r.Node.MustRun(tool, "-w", "-t", "nat", "-A", "KUBE-MARK-MASQ", "-j", "MARK", "--or-mark", "0x4000")
		}
	},
}

// fixtureOrder is the order fixtures run in.
var fixtureOrder = []string{"uplink", "dhcp", "device", "kube-proxy", "pod-veth"}

func fixtureNames() []string {
	var names []string
	for n := range fixtures {
		names = append(names, n)
	}
	sort.Strings(names)
	names = append(names, "kernel:8021q")
	for _, f := range testnet.KernelFeatures {
		names = append(names, "kernel:"+f)
	}
	return names
}

// kernelFeature maps the corpus's kernel:X names to testnet's features.
func kernelFeature(f string) string {
	if f == "8021q" {
		return "vlan"
	}
	return f
}

func podVeth(t *testing.T, e *env, c *Case, side string) {
	var conf struct {
		PrevResult *struct {
			Interfaces []struct {
				Name    string `json:"name"`
				Mac     string `json:"mac"`
				Sandbox string `json:"sandbox"`
			} `json:"interfaces"`
			IPs []struct {
				Address   string `json:"address"`
				Interface *int   `json:"interface"`
			} `json:"ips"`
			Routes []struct {
				Dst string `json:"dst"`
				GW  string `json:"gw"`
			} `json:"routes"`
		} `json:"prevResult"`
	}
	if err := json.Unmarshal(c.Config, &conf); err != nil || conf.PrevResult == nil {
		t.Fatalf("pod-veth: the case's config has no prevResult to build the veth from (%v)", err)
	}
	pr := conf.PrevResult
	ifName, hostName, podIdx := c.ifName(), "veth0", -1
	for i, itf := range pr.Interfaces {
		if itf.Sandbox != "" && itf.Name == ifName {
			podIdx = i
		} else if itf.Sandbox == "" && hostName == "veth0" {
			hostName = itf.Name
		}
	}
	n := e.r.Node
	n.MustRun("ip", "link", "add", hostName, "type", "veth", "peer", "name", ifName, "netns", e.pod.Name)
	n.MustRun("ip", "link", "set", hostName, "up")
	if podIdx >= 0 && pr.Interfaces[podIdx].Mac != "" {
		e.pod.MustRun("ip", "link", "set", ifName, "address", pr.Interfaces[podIdx].Mac)
	}
	e.pod.MustRun("ip", "link", "set", ifName, "up")
	var onLink bool
	for _, ip := range pr.IPs {
		if ip.Interface != nil && *ip.Interface != podIdx {
			continue
		}
		e.pod.MustRun("ip", "addr", "add", ip.Address, "dev", ifName)
		onLink = onLink || strings.HasSuffix(ip.Address, "/32") || strings.HasSuffix(ip.Address, "/128")
	}
	for _, rt := range pr.Routes {
		args := []string{"route", "add", rt.Dst}
		switch {
		case rt.GW != "":
			args = append(args, "via", rt.GW, "dev", ifName, "onlink")
		default:
			args = append(args, "dev", ifName)
		}
		if strings.Contains(rt.Dst, ":") {
			args = append([]string{"-6"}, args...)
		}
		e.pod.MustRun("ip", args...)
	}
}

// startDHCP starts dnsmasq on the outside end of the uplink and the side's
// dhcp daemon in the node; both stop when the test ends.
func startDHCP(t *testing.T, e *env, side string) {
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("dhcp fixture: dnsmasq not installed (Debian package dnsmasq-base; make test-deps installs it)")
	}
	dir := t.TempDir()
	dnsmasq := e.outside.Command("dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
		"--user=root", "--no-ping", "--interface=wan", "--bind-interfaces",
		"--dhcp-range=10.99.0.100,10.99.0.200,255.255.255.0,2m",
		"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"),
		"--pid-file="+filepath.Join(dir, "dnsmasq.pid"),
		"--dhcp-option=option:router,10.99.0.1")
	startDaemon(t, dnsmasq, filepath.Join(dir, "dnsmasq.log"))
	sock := filepath.Join(e.r.RunDir, "dhcp.sock")
	plugin := filepath.Join(side, "dhcp")
	args := []string{"daemon", "-socketpath", sock, "-pidfile", filepath.Join(dir, "dhcp.pid")}
	if runsCnibox(plugin) {
		// cnibox's daemon records its leases, by default in the
		// machine's /var/lib/cni/dhcp; the reference's keeps none.
		args = append(args, "-leasefile", filepath.Join(dir, "leases.json"))
	}
	daemon := e.r.Node.Command(plugin, args...)
	startDaemon(t, daemon, filepath.Join(dir, "daemon.log"))
	testnet.WaitFor(t, 10*time.Second, "the dhcp daemon's socket", func() bool {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
}

// runsCnibox reports whether the plugin at path is cnibox: the binary or a
// link to it, or an entry "cnibox install" writes ("#!DIR/cnibox").
func runsCnibox(path string) bool {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return false
	}
	if filepath.Base(real) == "cnibox" {
		return true
	}
	f, err := os.Open(real)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 512)
	n, _ := f.Read(head)
	line, _, _ := strings.Cut(string(head[:n]), "\n")
	interp, ok := strings.CutPrefix(line, "#!")
	return ok && filepath.Base(strings.TrimSpace(interp)) == "cnibox"
}

func startDaemon(t *testing.T, cmd *exec.Cmd, logFile string) {
	out, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Args, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		out.Close()
		if t.Failed() {
			if log, err := os.ReadFile(logFile); err == nil {
				t.Logf("%s log:\n%s", filepath.Base(logFile), log)
			}
		}
	})
}

// prepare makes the run's pod and runs the case's fixtures.
func prepare(t *testing.T, c *Case, r *testnet.Runtime, side string) *env {
	e := &env{r: r, pod: r.Pod(t), named: namedSysctls(c)}
	for _, name := range fixtureOrder {
		if c.hasNode(name) {
			fixtures[name](t, e, c, side)
		}
	}
	return e
}

func uplink(t *testing.T, e *env, c *Case, side string) {
	if e.outside != nil {
		return
	}
	e.outside = testnet.NewNS(t, "outside")
	n := e.r.Node
	n.MustRun("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "wan", "netns", e.outside.Name)
	n.MustRun("ip", "addr", "add", "10.99.0.2/24", "dev", "eth0")
	n.MustRun("ip", "link", "set", "eth0", "up")
	n.MustRun("ip", "route", "add", "default", "via", "10.99.0.1")
	e.outside.MustRun("ip", "addr", "add", "10.99.0.1/24", "dev", "wan")
	e.outside.MustRun("ip", "link", "set", "wan", "up")
}
