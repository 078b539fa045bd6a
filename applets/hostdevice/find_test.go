package hostdevice

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/logging"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// fakeSysfs builds a sysfs tree with a PCI NIC (0000:03:00.0, netdev
// fk0), a virtio NIC (0000:00:05.0, fk1 under virtio3/net), an auxiliary
// device (mlx5_core.sf.4, fk2), a DPDK-bound PCI device (0000:04:00.0,
// vfio-pci) and a PCI NIC whose netdev is not in the test's netns
// (0000:06:00.0, elsewhere0).
func fakeSysfs(t *testing.T) sysfs {
	t.Helper()
	root := t.TempDir()
	mk := func(p string) {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk("devices/pci0000:00/0000:00:03.0/0000:03:00.0/net/fk0")
	mk("bus/pci/devices")
	if err := os.Symlink("../../../devices/pci0000:00/0000:00:03.0/0000:03:00.0", filepath.Join(root, "bus/pci/devices/0000:03:00.0")); err != nil {
		t.Fatal(err)
	}
	mk("bus/pci/devices/0000:00:05.0/virtio3/net/fk1")
	mk("bus/auxiliary/devices/mlx5_core.sf.4/net/fk2")
	mk("bus/pci/devices/0000:04:00.0")
	mk("bus/pci/drivers/vfio-pci")
	if err := os.Symlink("../../../../bus/pci/drivers/vfio-pci", filepath.Join(root, "bus/pci/devices/0000:04:00.0/driver")); err != nil {
		t.Fatal(err)
	}
	mk("bus/pci/devices/0000:06:00.0/net/elsewhere0")
	return sysfs{root: root}
}

// TestFind resolves every selector kind against a fake sysfs, with the
// netdevs it names made real (veths) in a throwaway netns.
func TestFind(t *testing.T) {
	n := testnet.NewNS(t, "node")
	n.MustRun("ip", "link", "add", "fk0", "type", "veth", "peer", "name", "fk1")
	n.MustRun("ip", "link", "add", "fk2", "address", "02:00:00:00:00:f2", "type", "veth", "peer", "name", "fk3")
	s := fakeSysfs(t)
	cases := []struct {
		conf Config
		want string // link name, or an error substring prefixed with "!"
	}{
		{Config{Device: "fk0"}, "fk0"},
		{Config{HWAddr: "02:00:00:00:00:F2"}, "fk2"},
		{Config{KernelPath: "/sys/devices/pci0000:00/0000:00:03.0/0000:03:00.0"}, "fk0"},
		{Config{PCIBusID: "0000:03:00.0"}, "fk0"},
		{Config{PCIBusID: "0000:00:05.0"}, "fk1"},
		{Config{Device: "fk1", PCIBusID: "0000:03:00.0"}, "fk1"}, // device first
		{withDeviceID("0000:03:00.0", Config{Device: "fk1"}), "fk0"},
		{withDeviceID("mlx5_core.sf.4", Config{}), "fk2"},
		{Config{Device: "nope0"}, `!device "nope0": device not found in the node's netns: no such link`},
		{Config{PCIBusID: "0000:06:00.0"}, `!pciBusID "0000:06:00.0": device not found`},
		{Config{KernelPath: "/sys/devices/pci0000:00/none"}, "!no network device under it in sysfs"},
		{Config{HWAddr: "02:00:00:00:00:99"}, "!no link has this MAC"},
	}
	for _, c := range cases {
		err := n.Do(func() error {
			sel, err := c.conf.selector(s)
			if err != nil {
				return err
			}
			l, err := s.find(sel)
			if err != nil {
				return err
			}
			if l.Attrs().Name != c.want {
				t.Errorf("%+v: found %s, want %s", c.conf, l.Attrs().Name, c.want)
			}
			return nil
		})
		if strings.HasPrefix(c.want, "!") {
			if err == nil || !strings.Contains(err.Error(), c.want[1:]) {
				t.Errorf("%+v: error %v, want %q", c.conf, err, c.want[1:])
			}
		} else if err != nil {
			t.Errorf("%+v: %v", c.conf, err)
		}
	}
}

func withDeviceID(id string, c Config) Config {
	c.RuntimeConfig.DeviceID = id
	return c
}

func TestSelectorErrors(t *testing.T) {
	s := fakeSysfs(t)
	for _, c := range []struct {
		conf Config
		want string
	}{
		{Config{}, "device: one of"},
		{Config{HWAddr: "nope"}, `hwaddr: "nope"`},
		{Config{KernelPath: "/etc/passwd"}, "kernelpath: \"/etc/passwd\" must start with /sys/devices/"},
		{Config{KernelPath: "/sys/devices/../../etc"}, "kernelpath: \"/sys/devices/../../etc\" must not contain"},
		{Config{PCIBusID: "../../x"}, `pciBusID: "../../x" is not a device ID`},
		{withDeviceID("..", Config{}), `runtimeConfig.deviceID: ".." is not a device ID`},
		{withDeviceID("nothing", Config{}), "neither a PCI address nor an auxiliary device"},
	} {
		_, err := c.conf.selector(s)
		if err == nil || !strings.Contains(err.Error(), c.want) || cni.AsError(err).Code != cni.ErrInvalidConfig {
			t.Errorf("%+v: %v, want code 7 with %q", c.conf, err, c.want)
		}
	}
	if d := s.dpdk(selector{"pciBusID", "pci", "0000:04:00.0"}); d != "vfio-pci" {
		t.Errorf("dpdk driver = %q, want vfio-pci", d)
	}
	if d := s.dpdk(selector{"pciBusID", "pci", "0000:03:00.0"}); d != "" {
		t.Errorf("dpdk driver of a kernel NIC = %q", d)
	}
}

// TestDPDKAdd: ADD for a DPDK-bound device moves nothing and returns the
// (here empty) IPAM result with the config's DNS.
func TestDPDKAdd(t *testing.T) {
	saved := hostSysfs
	hostSysfs = fakeSysfs(t)
	defer func() { hostSysfs = saved }()
	pod := testnet.NewNS(t, "pod")
	req := &cni.Request{
		Command: cni.CmdAdd, ContainerID: "c1", Netns: pod.Path, IfName: "eth0", Version: "1.0.0", Name: "dpdk",
		Config: []byte(`{"cniVersion":"1.0.0","name":"dpdk","type":"host-device","pciBusID":"0000:04:00.0","dns":{"nameservers":["10.0.0.53"]}}`),
		Log:    logging.New("host-device", os.Stderr),
	}
	res, err := Add(req)
	if err != nil {
		t.Fatal(err)
	}
	cur := res.(*current.Result)
	if len(cur.Interfaces) != 0 || len(cur.DNS.Nameservers) != 1 {
		t.Fatalf("result = %+v", cur)
	}
	if out, _ := pod.Command("ip", "-o", "link").Output(); strings.Count(string(out), "\n") != 1 {
		t.Fatalf("pod links changed: %s", out)
	}
	req.Command = cni.CmdDel
	if err := Del(req); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

// TestBusInfo exercises the ethtool path on a real link: a veth reports
// no bus info, so it never matches a PCI address.
func TestBusInfo(t *testing.T) {
	n := testnet.NewNS(t, "node")
	n.MustRun("ip", "link", "add", "bi0", "type", "veth", "peer", "name", "bi1")
	err := n.Do(func() error {
		_, err := byBusInfo(selector{"pciBusID", "pci", "0000:03:00.0"})
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "ethtool bus info") {
		t.Fatalf("byBusInfo = %v", err)
	}
}
