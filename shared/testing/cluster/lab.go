// Package cluster is cnibox's multi-node lab: three nodes, each a network
// namespace cabled to one underlay bridge (in a netns of its own), etcd in
// another netns as flannel's subnet manager, the real flanneld on every
// node, and cnibox's flannel applet (flannel -> bridge -> host-local, then
// portmap and bandwidth) wiring pods into it, as a k3s node does. Nothing
// runs in the machine's root netns or writes to its /run or /var/lib/cni:
// each node is a testnet.Runtime with its own state dirs, and flanneld
// writes a subnet file of the node's own.
//
// TestCluster (make test) plays the vxlan and host-gw backends,
// TestClusterIPIP the ipip backend in make vmtest's VM (the host kernel
// has no ipip); scripts/cluster-demo shows the lab to a person and
// measures it.
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// The underlay is 198.18.0.0/24, from the range RFC 2544 sets aside for
// benchmarks: no real network uses it. Node i is .i, etcd .100. The
// cluster network is 10.42.0.0/16 (k3s's), one /24 per node.
const (
	underlayPrefix = "198.18.0."
	etcdIP         = underlayPrefix + "100"
	etcdURL        = "http://" + etcdIP + ":2379"
	ClusterCIDR    = "10.42.0.0/16"
)

// Flanneld returns the flanneld binary (CNIBOX_FLANNELD, or where make
// flanneld builds it) or skips the test.
func Flanneld(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("CNIBOX_FLANNELD")
	if bin == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			cache = filepath.Join(os.Getenv("HOME"), ".cache")
		}
		bin = filepath.Join(cache, "cnibox", "flannel-v0.26.7", "flanneld")
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CNIBOX_FLANNELD") != "" {
			t.Fatalf("flanneld: %v", err)
		}
		t.Skipf("flanneld not built (make flanneld): %v", err)
	}
	return bin
}

// Patience is d, or four times d in the VM (qemu TCG), where etcd and
// flanneld start and learn leases that much slower.
func Patience(d time.Duration) time.Duration {
	if testnet.InVM() {
		return 4 * d
	}
	return d
}

// Lab is one cluster: underlay, etcd and nodes.
type Lab struct {
	t        testing.TB
	Backend  string
	Underlay *testnet.NS
	Etcd     *testnet.NS
	Nodes    []*Node
	flanneld string
	etcd     *process
}

// Node is one node: a testnet.Runtime (its netns, CNI dirs, libcni) plus
// its flanneld and the pods attached to it.
type Node struct {
	*testnet.Runtime
	lab        *Lab
	Index      int
	Name       string
	IP         string // underlay address
	SubnetFile string
	List       *libcni.NetworkConfigList
	Pods       []*Pod
	flanneld   *process
}

// Pod is one pod of a node.
type Pod struct {
	Name string
	NS   *testnet.NS
	Node *Node
	IP   string
	att  *testnet.Attachment
}

// process is a daemon the lab started, its output kept for failures.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

// lockedBuffer is a bytes.Buffer safe for a process's writes and a test's reads.
type lockedBuffer struct {
	mu sync.Mutex
	bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.String()
}

func start(t testing.TB, name string, cmd *exec.Cmd) *process {
	t.Helper()
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group: stop signals it alone, never the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	return p
}

// stop ends the process (SIGTERM, then SIGKILL after 5s) and waits for it.
func (p *process) stop() {
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

func (p *process) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// New builds a lab of n nodes for backend ("vxlan", "host-gw", "udp"):
// underlay, etcd with flannel's network config, and every node with
// flanneld up (its subnet file written) and cnibox's conflist. Everything
// is torn down when the test ends.
func New(t testing.TB, backend string, n int) *Lab {
	t.Helper()
	testnet.RequireRoot(t)
	for _, bin := range []string{"etcd", "etcdctl"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (Debian's etcd-server and etcd-client; make test-deps): %v", bin, err)
		}
	}
	// flanneld refuses to start without br_netfilter (a check for kubeadm
	// clusters). The host has it loaded, scripts/vmtest loads it at boot.
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
		t.Skipf("flanneld needs the br_netfilter module, which is not loaded: %v", err)
	}
	l := &Lab{t: t, Backend: backend, flanneld: Flanneld(t)}
	l.Underlay = testnet.NewNS(t, "underlay")
	l.Underlay.MustRun("ip", "link", "add", "br0", "type", "bridge")
	l.Underlay.MustRun("ip", "link", "set", "br0", "up")

	l.Etcd = testnet.NewNS(t, "etcd")
	l.cable(l.Etcd, "etcd", etcdIP)
	dir := t.TempDir()
	l.etcd = start(t, "etcd", l.Etcd.Command("etcd", "--name", "lab", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "lab=http://127.0.0.1:2380", "--log-level", "warn", "--logger", "zap"))
	t.Cleanup(func() {
		l.etcd.stop()
		if t.Failed() {
			t.Logf("etcd's output:\n%s", tail(l.etcd.out.String(), 3000))
		}
	})
	config := fmt.Sprintf(`{"Network":%q,"SubnetLen":24,"Backend":{"Type":%q}}`, ClusterCIDR, backend)
	var err error
	for deadline := time.Now().Add(Patience(20 * time.Second)); ; time.Sleep(200 * time.Millisecond) {
		_, err = l.Etcd.Run("env", "ETCDCTL_API=3", "etcdctl", "--endpoints", etcdURL, "--dial-timeout", "1s",
			"put", "/coreos.com/network/config", config)
		if err == nil || time.Now().After(deadline) || !l.etcd.running() {
			break
		}
	}
	if err != nil {
		t.Fatalf("etcd did not take flannel's network config: %v\n%s", err, tail(l.etcd.out.String(), 3000))
	}

	for i := 1; i <= n; i++ {
		l.Nodes = append(l.Nodes, l.newNode(i, dir))
	}
	// flanneld's start is its wait for etcd and a lease: the nodes' in parallel.
	var wg sync.WaitGroup
	for _, nd := range l.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); nd.startFlanneld() }()
	}
	wg.Wait()
	for _, nd := range l.Nodes {
		if err := nd.waitSubnetFile(Patience(30 * time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// cable connects ns to the underlay bridge through a veth whose ns end is
// eth0 with addr/24.
func (l *Lab) cable(ns *testnet.NS, name, addr string) {
	l.Underlay.MustRun("ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns.Name)
	l.Underlay.MustRun("ip", "link", "set", name, "master", "br0", "up")
	ns.MustRun("ip", "addr", "add", addr+"/24", "dev", "eth0")
	ns.MustRun("ip", "link", "set", "eth0", "up")
}

// conflist is k3s's 10-flannel.conflist with the node's subnet file.
const conflist = `{
  "name":"cbr0",
  "cniVersion":"1.0.0",
  "plugins":[
    {"type":"flannel","subnetFile":%q,"delegate":{"hairpinMode":true,"forceAddress":true,"isDefaultGateway":true}},
    {"type":"portmap","capabilities":{"portMappings":true}},
    {"type":"bandwidth","capabilities":{"bandwidth":true}}
  ]
}`

func (l *Lab) newNode(i int, dir string) *Node {
	t := l.t
	nd := &Node{Runtime: testnet.NewRuntime(t), lab: l, Index: i, Name: fmt.Sprintf("node%d", i), IP: fmt.Sprint(underlayPrefix, i)}
	l.cable(nd.Node, nd.Name, nd.IP)
	nd.Node.MustRun("sysctl", "-qw", "net.ipv4.ip_forward=1")
	nd.SubnetFile = filepath.Join(dir, nd.Name, "subnet.env")
	if err := os.MkdirAll(filepath.Dir(nd.SubnetFile), 0o755); err != nil {
		t.Fatal(err)
	}
	nd.List = nd.Conflist(fmt.Sprintf(conflist, nd.SubnetFile))
	t.Cleanup(func() {
		nd.flanneld.stop()
		if t.Failed() && nd.flanneld != nil {
			t.Logf("%s flanneld's output:\n%s", nd.Name, tail(nd.flanneld.out.String(), 4000))
		}
	})
	return nd
}

// startFlanneld runs flanneld in the node's netns, on its underlay eth0,
// masquerading traffic that leaves the cluster network (as kube-flannel
// runs it: the CNI config then gets ipMasq false).
func (nd *Node) startFlanneld() {
	nd.flanneld = start(nd.lab.t, nd.Name+" flanneld", nd.Node.Command(nd.lab.flanneld,
		"-etcd-endpoints="+etcdURL, "-iface=eth0", "-subnet-file="+nd.SubnetFile, "-ip-masq"))
}

// StopFlanneld stops the node's flanneld.
func (nd *Node) StopFlanneld() { nd.flanneld.stop() }

// RestartFlanneld starts flanneld again and waits for its subnet file.
func (nd *Node) RestartFlanneld() {
	nd.lab.t.Helper()
	nd.startFlanneld()
	if err := nd.waitSubnetFile(Patience(30 * time.Second)); err != nil {
		nd.lab.t.Fatal(err)
	}
}

// waitSubnetFile waits for flanneld's lease. Nodes starting together can
// pick the same free subnet; the loser exits ("subnet already exists") and
// its supervisor (kubelet, systemd) starts it again, as the lab does here.
func (nd *Node) waitSubnetFile(timeout time.Duration) error {
	restarts := 0
	for deadline := time.Now().Add(timeout); ; time.Sleep(100 * time.Millisecond) {
		if nd.Subnet() != "" {
			return nil
		}
		if !nd.flanneld.running() && restarts < 3 && strings.Contains(nd.flanneld.out.String(), "subnet already exists") {
			restarts++
			nd.lab.t.Logf("%s: flanneld lost a lease race with another node; restarting it as its supervisor would", nd.Name)
			nd.startFlanneld()
			continue
		}
		if !nd.flanneld.running() {
			return fmt.Errorf("%s: flanneld exited before writing %s:\n%s", nd.Name, nd.SubnetFile, tail(nd.flanneld.out.String(), 4000))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: flanneld wrote no %s in %v:\n%s", nd.Name, nd.SubnetFile, timeout, tail(nd.flanneld.out.String(), 4000))
		}
	}
}

// SubnetEnv returns the node's subnet file as key -> value (empty while
// flanneld has not written it).
func (nd *Node) SubnetEnv() map[string]string {
	data, err := os.ReadFile(nd.SubnetFile)
	if err != nil {
		return nil
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	if env["FLANNEL_SUBNET"] == "" || env["FLANNEL_MTU"] == "" {
		return nil // being written
	}
	return env
}

// Subnet is the node's pod subnet as a network ("10.42.7.0/24"), "" if none.
func (nd *Node) Subnet() string {
	s := nd.SubnetEnv()["FLANNEL_SUBNET"]
	if s == "" {
		return ""
	}
	ip, bits, _ := strings.Cut(s, "/")
	return ip[:strings.LastIndex(ip, ".")] + ".0/" + bits
}

// AddPod attaches a new pod to the node through the conflist; caps are
// the runtime's capability args (portMappings, bandwidth).
func (nd *Node) AddPod(name string, caps map[string]any) (*Pod, error) {
	ns := nd.Pod(nd.lab.t)
	a := nd.Attach(ns, "eth0")
	a.Caps = caps
	p := &Pod{Name: name, NS: ns, Node: nd, att: a}
	res, err := nd.Add(nd.List, a)
	if err != nil {
		return p, err
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return p, err
	}
	if len(cur.IPs) == 0 {
		return p, fmt.Errorf("ADD of %s: no address in the result", name)
	}
	p.IP = cur.IPs[0].Address.IP.String()
	nd.Pods = append(nd.Pods, p)
	return p, nil
}

// MustAddPod is AddPod that fails the test.
func (nd *Node) MustAddPod(name string, caps map[string]any) *Pod {
	nd.lab.t.Helper()
	p, err := nd.AddPod(name, caps)
	if err != nil {
		nd.lab.t.Fatalf("%s: ADD %s: %v", nd.Name, name, err)
	}
	return p
}

// DelPod runs DEL of the pod's attachment and forgets it.
func (nd *Node) DelPod(p *Pod) error {
	if err := nd.Del(nd.List, p.att); err != nil {
		return err
	}
	for i, q := range nd.Pods {
		if q == p {
			nd.Pods = append(nd.Pods[:i], nd.Pods[i+1:]...)
			break
		}
	}
	return nil
}

// Pods is every pod of the lab.
func (l *Lab) Pods() []*Pod {
	var out []*Pod
	for _, nd := range l.Nodes {
		out = append(out, nd.Pods...)
	}
	return out
}

// WaitRoutes waits until every node has the backend's route to every other
// node's subnet (flanneld programs them as it learns the leases); after
// timeout it returns what is still missing.
func (l *Lab) WaitRoutes(timeout time.Duration) error {
	var err error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err = l.CheckState(); err == nil {
			return nil
		}
	}
	return err
}

// CheckState checks each node's kernel state against what flannel's
// backend must have made: host-gw a route "<subnet> via <node>" on the
// underlay; ipip the same through flannel.ipip (onlink); vxlan flannel.1 (VNI 1, on eth0), "<subnet> via <subnet>.0
// dev flannel.1 onlink", a permanent neighbour for that gateway with the
// peer's flannel.1 MAC and the FDB entry sending that MAC to the peer's
// underlay address; udp the tun flannel0 with the cluster route.
func (l *Lab) CheckState() error {
	var errs []error
	macs := map[*Node]string{}
	if l.Backend == "vxlan" {
		for _, nd := range l.Nodes {
			out, err := nd.Node.Run("cat", "/sys/class/net/flannel.1/address")
			if err != nil {
				return fmt.Errorf("%s: no flannel.1: %v", nd.Name, err)
			}
			macs[nd] = strings.TrimSpace(out)
		}
	}
	for _, nd := range l.Nodes {
		routes := nd.Node.MustRun("ip", "-4", "route")
		switch l.Backend {
		case "vxlan":
			link := nd.Node.MustRun("ip", "-d", "link", "show", "flannel.1")
			if !strings.Contains(link, "vxlan id 1 ") || !strings.Contains(link, "dev eth0") {
				errs = append(errs, fmt.Errorf("%s: flannel.1 is not VNI 1 on eth0:\n%s", nd.Name, link))
			}
			neigh := nd.Node.MustRun("ip", "neigh", "show", "dev", "flannel.1")
			fdb := nd.Node.MustRun("bridge", "fdb", "show", "dev", "flannel.1")
			for _, peer := range l.Nodes {
				if peer == nd {
					continue
				}
				sub := peer.Subnet()
				gw := strings.TrimSuffix(sub, "/24")
				for what, want := range map[string]string{
					"route":     sub + " via " + gw + " dev flannel.1 onlink",
					"neighbour": gw + " lladdr " + macs[peer] + " PERMANENT",
					"fdb":       macs[peer] + " dst " + peer.IP + " self permanent",
				} {
					have := map[string]string{"route": routes, "neighbour": neigh, "fdb": fdb}[what]
					if !strings.Contains(have, want) {
						errs = append(errs, fmt.Errorf("%s: no %s %q for %s", nd.Name, what, want, peer.Name))
					}
				}
			}
		case "host-gw":
			for _, peer := range l.Nodes {
				if peer == nd {
					continue
				}
				if want := peer.Subnet() + " via " + peer.IP + " dev eth0"; !strings.Contains(routes, want) {
					errs = append(errs, fmt.Errorf("%s: no route %q for %s", nd.Name, want, peer.Name))
				}
			}
		case "ipip":
			for _, peer := range l.Nodes {
				if peer == nd {
					continue
				}
				if want := peer.Subnet() + " via " + peer.IP + " dev flannel.ipip onlink"; !strings.Contains(routes, want) {
					errs = append(errs, fmt.Errorf("%s: no route %q for %s", nd.Name, want, peer.Name))
				}
			}
		case "udp":
			if want := ClusterCIDR + " dev flannel0"; !strings.Contains(routes, want) {
				errs = append(errs, fmt.Errorf("%s: no route %q", nd.Name, want))
			}
		}
	}
	return errors.Join(errs...)
}

// State is the part of a node's kernel state the backend made, for a person.
func (nd *Node) State() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s (%s, pods %s)\n", nd.Name, nd.IP, nd.Subnet())
	show := func(args ...string) {
		out, _ := nd.Node.Run(args[0], args[1:]...)
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(args, " "), out)
	}
	show("ip", "-4", "route")
	switch nd.lab.Backend {
	case "vxlan":
		show("ip", "-d", "-br", "link", "show", "flannel.1")
		show("ip", "neigh", "show", "dev", "flannel.1")
		show("bridge", "fdb", "show", "dev", "flannel.1")
	}
	return b.String()
}

// Ping sends one ping from p to addr.
func (p *Pod) Ping(addr string) error { return p.NS.Ping(addr) }

// CNICode is the CNI error code of err, 0 if it has none.
func CNICode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func etcdVersion() string {
	out, _ := exec.Command("etcd", "--version").Output()
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(first)
}

// FlanneldVersion is what the lab's flanneld says it is.
func (l *Lab) FlanneldVersion() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, l.flanneld, "-version").CombinedOutput()
	return strings.TrimSpace(string(out))
}

// EtcdVersion is the etcd the lab runs.
func (l *Lab) EtcdVersion() string { return etcdVersion() }

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
