package reliability

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// dhcpLab is a testnet.DHCPLab on 10.39.0.0/24 with cnibox's dhcp daemon
// running. Pods attach with macvlan on uplink (or bridge, see
// newDHCPBridgeLab) and dhcp IPAM (in-process in the main plugin).
type dhcpLab struct {
	*testnet.DHCPLab
	list *libcni.NetworkConfigList
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
	l := &dhcpLab{DHCPLab: testnet.NewDHCPLab(t, testnet.NewRuntime(t), "10.39.0.0/24", bridge)}
	l.StartDaemon()
	plugin := `"type":"macvlan","master":"uplink","mode":"bridge"`
	if bridge {
		plugin = `"type":"bridge","bridge":"br-dhcp"`
	}
	l.list = l.R.Conflist(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"dhcp-net","plugins":[
		{%s,"ipam":{"type":"dhcp","daemonSocketPath":%q}}]}`, plugin, l.Sock))
	return l
}

// restartDaemon starts the daemon again if it was killed.
func (l *dhcpLab) restartDaemon(t *testing.T) {
	if l.Daemon == nil {
		l.StartDaemon()
	}
}

// daemonLeases is the probe of the daemon's lease file: one client ID
// (container/network/ifname) a line.
func (l *dhcpLab) daemonLeases(t testing.TB) (string, []string) {
	data, err := os.ReadFile(l.LeaseFile)
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
	entries, err := os.ReadDir(filepath.Dir(l.LeaseFile))
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
	data, err := os.ReadFile(l.DnsmasqLeases)
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
