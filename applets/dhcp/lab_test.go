package dhcp_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// lab is a testnet.DHCPLab on 10.99.0.0/24 whose runtime also finds the
// reference plugins. Pods attach with macvlan on uplink, or, in a bridge
// lab, with the bridge plugin (or a veth of plug's) on br-dhcp.
type lab struct {
	*testnet.DHCPLab
	t testing.TB
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
	r := testnet.NewRuntime(t)
	r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
	return &lab{DHCPLab: testnet.NewDHCPLab(t, r, "10.99.0.0/24", bridge, dnsmasqOpts...), t: t}
}

func (l *lab) readLog() string {
	data, _ := os.ReadFile(l.DnsmasqLog)
	return string(data)
}

func (l *lab) serverLeases() string {
	data, _ := os.ReadFile(l.DnsmasqLeases)
	return string(data)
}

func (l *lab) readDaemonLog() string {
	data, _ := os.ReadFile(l.DaemonLog)
	return string(data)
}

// startReferenceDaemon starts Debian's reference daemon instead.
func (l *lab) startReferenceDaemon() {
	l.t.Helper()
	ref := testnet.RequireReference(l.t, "dhcp")
	l.StartDaemonCmd(l.R.Node.Command(ref, "daemon", "-socketpath", l.Sock, "-pidfile", l.Pidfile, "-timeout", "2s"))
}

// macvlanList is a network of macvlan on uplink with dhcp IPAM.
func (l *lab) macvlanList(version, name, ipamExtra string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"macvlan","master":"uplink","mode":"bridge",
		"ipam":{"type":"dhcp","daemonSocketPath":%q%s}}]}`, version, name, l.Sock, ipamExtra)
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
	l.R.SetPath(dir + ":" + l.R.BinDir)
}

// bridgeList is a network of the bridge plugin on br-dhcp with dhcp IPAM.
func (l *lab) bridgeList(version, name, ipamExtra string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"bridge","bridge":"br-dhcp",
		"ipam":{"type":"dhcp","daemonSocketPath":%q%s}}]}`, version, name, l.Sock, ipamExtra)
}

// ipamList is a network whose only plugin is dhcp itself: the pod's
// interface must already exist (see plug). It shows the IPAM result as
// is, DNS included, and reaches every verb at every version.
func (l *lab) ipamList(version, name, ipamExtra string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"dhcp",
		"ipam":{"type":"dhcp","daemonSocketPath":%q%s}}]}`, version, name, l.Sock, ipamExtra)
}

// plug cables a new veth from br-dhcp into pod as ifName and returns its MAC.
func (l *lab) plug(pod *testnet.NS, ifName string) string {
	l.t.Helper()
	host := "vh" + pod.Name[len(pod.Name)-8:]
	l.R.Node.MustRun("ip", "link", "add", host, "type", "veth", "peer", "name", ifName, "netns", pod.Name)
	l.R.Node.MustRun("ip", "link", "set", host, "master", "br-dhcp", "up")
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
