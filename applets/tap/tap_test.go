package tap_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

func node(t *testing.T) *testnet.Runtime {
	t.Helper()
	return testnet.NewRuntime(t)
}

var netSeq int

func list(t *testing.T, r *testnet.Runtime, version, fields string) *libcni.NetworkConfigList {
	t.Helper()
	netSeq++
	name := fmt.Sprintf("tap%d", netSeq)
	if fields != "" {
		fields = "," + fields
	}
	return r.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"tap"%s}]}`, version, name, fields))
}

const hostLocal = `"ipam":{"type":"host-local","ranges":[[{"subnet":"10.20.0.0/24"}],[{"subnet":"fd00:20::/64","gateway":"fd00:20::1"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}`

// tapOf returns the pod's link name as netlink sees it, which must be a tap.
func tapOf(t *testing.T, pod *testnet.NS, name string) *netlink.Tuntap {
	t.Helper()
	l := pod.Link(t, name)
	tap, ok := l.(*netlink.Tuntap)
	if !ok || tap.Mode != netlink.TUNTAP_MODE_TAP {
		t.Fatalf("%s is a %s link (%T), want a tap", name, l.Type(), l)
	}
	return tap
}

func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// TestVersions drives ADD, CHECK, GC, STATUS and DEL through libcni at
// every spec version, with host-local (IPv4 and IPv6 with a gateway).
func TestVersions(t *testing.T) {
	r := node(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		l := list(t, r, v, hostLocal)
		pod := r.Pod(t)
		a := r.Attach(pod, "net1")
		res, err := r.Add(l, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		tap := tapOf(t, pod, "net1")
		if tap.Flags&netlink.TUNTAP_NO_PI == 0 || tap.Attrs().Flags&net.FlagUp == 0 || tap.NonPersist {
			t.Errorf("tap: flags %#x, link flags %v, non-persistent %v; want no-PI, up, persistent", tap.Flags, tap.Attrs().Flags, tap.NonPersist)
		}
		cur, err := current.NewResultFromResult(res)
		if err != nil {
			t.Fatal(err)
		}
		if cni.VersionAtLeast(v, "0.3.0") {
			if len(cur.Interfaces) != 1 || cur.Interfaces[0].Name != "net1" || cur.Interfaces[0].Mac != tap.Attrs().HardwareAddr.String() || cur.Interfaces[0].Sandbox != pod.Path {
				t.Errorf("result interfaces = %+v", cur.Interfaces)
			}
		}
		if len(cur.IPs) != 2 {
			t.Fatalf("result IPs = %v, want one IPv4 and one IPv6", cur.IPs)
		}
		addrs := pod.MustRun("ip", "-o", "addr", "show", "dev", "net1")
		for _, ip := range cur.IPs {
			if !strings.Contains(addrs, ip.Address.String()) {
				t.Errorf("pod lacks %s: %s", ip.Address.String(), addrs)
			}
		}
		routes := pod.MustRun("ip", "-6", "route", "show", "default")
		if !strings.Contains(routes, "fd00:20::1") {
			t.Errorf("no IPv6 default route via the gateway: %s", routes)
		}
		if got := strings.TrimSpace(pod.MustRun("cat", "/proc/sys/net/ipv4/conf/net1/arp_notify")); got != "1" {
			t.Errorf("arp_notify = %s, want 1", got)
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := r.Check(l, a); err != nil {
				t.Errorf("CHECK: %v", err)
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := r.Status(l); err != nil {
				t.Errorf("STATUS: %v", err)
			}
			if err := r.GC(l, a); err != nil {
				t.Errorf("GC: %v", err)
			}
			if got := len(r.Reservations(l.Name)); got != 2 {
				t.Errorf("GC with the attachment valid: %d reservations, want 2", got)
			}
		}
		for i := 0; i < 2; i++ {
			if err := r.Del(l, a); err != nil {
				t.Fatalf("DEL #%d: %v", i+1, err)
			}
		}
		if got := pod.Links(t); len(got) != 1 {
			t.Errorf("links left in the pod: %v", got)
		}
		if got := r.Reservations(l.Name); len(got) != 0 {
			t.Errorf("addresses still allocated: %v", got)
		}
	})
}

// TestFrameThrough opens the tap as a VM runtime does (TUNSETIFF on
// /dev/net/tun in the pod) and passes frames through it: an ARP request
// written into the tap comes out of the pod's kernel as a reply for the
// tap's address, from the tap's MAC; and a packet the pod sends to the
// "guest" comes out of the fd.
func TestFrameThrough(t *testing.T) {
	r := node(t)
	l := list(t, r, "1.0.0", `"mac":"02:aa:bb:cc:dd:01",`+
		`"ipam":{"type":"host-local","ranges":[[{"subnet":"10.20.0.0/24","rangeStart":"10.20.0.2","rangeEnd":"10.20.0.2"}]]}`)
	pod := r.Pod(t)
	a := r.Attach(pod, "tap0")
	if _, err := r.Add(l, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Cleanup(func() { _ = r.Del(l, a) })

	tapMAC, _ := net.ParseMAC("02:aa:bb:cc:dd:01")
	guestMAC, _ := net.ParseMAC("02:00:00:00:00:09")
	podIP, guestIP := net.ParseIP("10.20.0.2").To4(), net.ParseIP("10.20.0.9").To4()
	err := pod.Do(func() error {
		fd, err := openTap("tap0", unix.IFF_TAP|unix.IFF_NO_PI)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		// guest -> pod: who has 10.20.0.2? The pod's kernel answers. The
		// request is repeated, as a guest's ARP is: opening the tap gives
		// it carrier, and until linkwatch has activated its qdisc (later
		// on a loaded machine) the kernel drops what the pod sends.
		request := arpFrame(1, guestMAC, guestIP, make(net.HardwareAddr, 6), podIP, broadcast)
		var sent time.Time
		var writeErr error
		want := arpFrame(2, tapMAC, podIP, guestMAC, guestIP, guestMAC)
		err = readUntil(fd, func(f []byte) bool {
			if f == nil {
				if time.Since(sent) > 500*time.Millisecond {
					_, writeErr = unix.Write(fd, request)
					sent = time.Now()
				}
				return writeErr != nil
			}
			return len(f) >= len(want) && bytes.Equal(f[:len(want)], want)
		})
		if writeErr != nil {
			return fmt.Errorf("write ARP request into the tap: %w", writeErr)
		}
		if err != nil {
			return fmt.Errorf("no ARP reply from the pod: %w", err)
		}
		// pod -> guest: the kernel now knows the guest; a UDP datagram to
		// it comes out of the fd.
		c, err := net.Dial("udp4", "10.20.0.9:9999")
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("cnibox-tap")); err != nil {
			return err
		}
		return readUntil(fd, func(f []byte) bool {
			return len(f) > 14 && bytes.Equal(f[:6], guestMAC) && bytes.Contains(f, []byte("cnibox-tap"))
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Check(l, a); err != nil {
		t.Errorf("CHECK after the VM runtime closed the tap: %v", err)
	}
}

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func arpFrame(op uint16, sha net.HardwareAddr, spa net.IP, tha net.HardwareAddr, tpa net.IP, dst net.HardwareAddr) []byte {
	b := make([]byte, 0, 42)
	b = append(b, dst...)
	b = append(b, sha...)
	b = binary.BigEndian.AppendUint16(b, 0x0806)
	b = append(b, 0, 1, 8, 0, 6, 4)
	b = binary.BigEndian.AppendUint16(b, op)
	b = append(b, sha...)
	b = append(b, spa...)
	b = append(b, tha...)
	return append(b, tpa...)
}

func openTap(name string, flags uint16) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, err
	}
	var ifr [unix.IFNAMSIZ + 24]byte
	copy(ifr[:], name)
	*(*uint16)(unsafe.Pointer(&ifr[unix.IFNAMSIZ])) = flags
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETIFF %s: %w", name, e)
	}
	return fd, nil
}

// readUntil reads frames from the tap until one satisfies ok, for up to
// 10 s (a bound on a hang, not a timing assertion). ok(nil) is called
// first and then whenever nothing came for 200 ms.
func readUntil(fd int, ok func([]byte) bool) error {
	buf := make([]byte, 65536)
	deadline := time.Now().Add(10 * time.Second)
	var seen []string
	ok(nil)
	for time.Now().Before(deadline) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, 200); err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EAGAIN) {
			ok(nil)
			continue
		}
		if err != nil {
			return err
		}
		if ok(buf[:n]) {
			return nil
		}
		seen = append(seen, fmt.Sprintf("%x", buf[:min(n, 42)]))
	}
	return fmt.Errorf("not seen in 10s; frames: %v", seen)
}

// TestOwnerGroupMultiQueue: owner, group, multiQueue, mtu and mac as the
// config says, with the reference's virtio-net header when both owner and
// group are set; CHECK passes, and fails once the tap changed.
func TestOwnerGroupMultiQueue(t *testing.T) {
	r := node(t)
	l := list(t, r, "1.1.0", `"owner":1000,"group":1001,"multiQueue":true,"mtu":9000,"mac":"02:aa:bb:cc:dd:02"`)
	pod := r.Pod(t)
	a := r.Attach(pod, "net1")
	if _, err := r.Add(l, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	tap := tapOf(t, pod, "net1")
	if tap.Owner != 1000 || tap.Group != 1001 || tap.Flags&netlink.TUNTAP_MULTI_QUEUE == 0 || tap.Flags&netlink.TUNTAP_VNET_HDR == 0 ||
		tap.Attrs().MTU != 9000 || tap.Attrs().HardwareAddr.String() != "02:aa:bb:cc:dd:02" {
		t.Errorf("tap = owner %d group %d flags %#x mtu %d mac %s", tap.Owner, tap.Group, tap.Flags, tap.Attrs().MTU, tap.Attrs().HardwareAddr)
	}
	// A multi-queue tap opens once per queue.
	if err := pod.Do(func() error {
		var fds []int
		defer func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}()
		for range 2 {
			fd, err := openTap("net1", unix.IFF_TAP|unix.IFF_NO_PI|unix.IFF_MULTI_QUEUE)
			if err != nil {
				return err
			}
			fds = append(fds, fd)
		}
		return nil
	}); err != nil {
		t.Errorf("open two queues: %v", err)
	}
	if err := r.Check(l, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	pod.MustRun("ip", "link", "set", "net1", "mtu", "1400")
	if err := r.Check(l, a); err == nil || !strings.Contains(err.Error(), "MTU") {
		t.Errorf("CHECK after the MTU changed: %v, want an MTU error", err)
	}
	if err := r.Del(l, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if got := pod.Links(t); len(got) != 1 {
		t.Errorf("links left in the pod: %v", got)
	}
}

// TestOwnerless: without owner and group (the reference's "ip tuntap"
// path) the tap has none (-1) and no virtio-net header; a single-queue
// opener must not ask for multi-queue.
func TestOwnerless(t *testing.T) {
	r := node(t)
	l := list(t, r, "1.1.0", `"owner":1000`)
	pod := r.Pod(t)
	a := r.Attach(pod, "net1")
	if _, err := r.Add(l, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	tap := tapOf(t, pod, "net1")
	// netlink leaves out an unset group; sysfs says -1.
	group := strings.TrimSpace(pod.MustRun("cat", "/sys/class/net/net1/group"))
	if tap.Owner != 1000 || group != "-1" || tap.Flags&netlink.TUNTAP_VNET_HDR != 0 || tap.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		t.Errorf("tap = owner %d group %s flags %#x, want owner 1000, no group, no vnet_hdr, single queue", tap.Owner, group, tap.Flags)
	}
	if err := r.Check(l, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := r.Del(l, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

// TestBridgeInPod: with "bridge", the tap is a port of that bridge in the
// pod (as KubeVirt wires a VM: the pod's interface and the VM's tap on one
// in-pod bridge); the bridge's address is reachable through the tap.
// A bridge the pod lacks is a config error and leaves nothing.
func TestBridgeInPod(t *testing.T) {
	r := node(t)
	pod := r.Pod(t)
	pod.MustRun("ip", "link", "add", "br0", "type", "bridge")
	pod.MustRun("ip", "addr", "add", "10.30.0.1/24", "dev", "br0")
	pod.MustRun("ip", "link", "set", "br0", "up")
	l := list(t, r, "1.1.0", `"bridge":"br0","mac":"02:aa:bb:cc:dd:03"`)
	a := r.Attach(pod, "tap0")
	res, err := r.Add(l, a)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	cur, _ := current.NewResultFromResult(res)
	if len(cur.IPs) != 0 || len(cur.Interfaces) != 1 {
		t.Errorf("L2 result = %+v", cur)
	}
	tap := tapOf(t, pod, "tap0")
	br := pod.Link(t, "br0")
	if tap.Attrs().MasterIndex != br.Attrs().Index {
		t.Fatalf("tap master = %d, want br0 (%d)", tap.Attrs().MasterIndex, br.Attrs().Index)
	}
	guestMAC, _ := net.ParseMAC("02:00:00:00:00:0a")
	err = pod.Do(func() error {
		fd, err := openTap("tap0", unix.IFF_TAP|unix.IFF_NO_PI)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		brIP, guestIP := net.ParseIP("10.30.0.1").To4(), net.ParseIP("10.30.0.9").To4()
		// The port forwards once the tap has carrier (opened): ask again
		// until the bridge answers.
		req := arpFrame(1, guestMAC, guestIP, make(net.HardwareAddr, 6), brIP, broadcast)
		return readUntil(fd, func(f []byte) bool {
			if f == nil {
				_, _ = unix.Write(fd, req)
				return false
			}
			return len(f) >= 42 && bytes.Equal(f[:6], guestMAC) && binary.BigEndian.Uint16(f[20:22]) == 2 && bytes.Equal(f[28:32], brIP)
		})
	})
	if err != nil {
		t.Errorf("the bridge does not answer through the tap: %v", err)
	}
	if err := r.Check(l, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	pod.MustRun("ip", "link", "set", "tap0", "nomaster")
	if err := r.Check(l, a); err == nil {
		t.Error("CHECK passes with the tap out of its bridge")
	}
	if err := r.Del(l, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}

	bad := list(t, r, "1.1.0", `"bridge":"nosuchbr"`)
	b := r.Attach(pod, "tap1")
	if _, err := r.Add(bad, b); cniCode(err) != cni.ErrInvalidConfig || !strings.Contains(err.Error(), "bridge") {
		t.Errorf("ADD with a missing bridge: %v, want code 7 naming bridge", err)
	}
	if got := pod.Links(t); !slices.Equal(got, []string{"br0", "lo"}) && !slices.Equal(got, []string{"lo", "br0"}) {
		t.Errorf("links in the pod after the refused ADD: %v", got)
	}
}

// TestErrors: a bad MAC is a config error (7), a CNI_IFNAME that the pod
// has is code 4 and leaves the existing link alone, and DEL of a pod whose
// netns is gone succeeds.
func TestErrors(t *testing.T) {
	r := node(t)
	pod := r.Pod(t)
	if _, err := r.Add(list(t, r, "1.0.0", `"mac":"01:00:5e:00:00:01"`), r.Attach(pod, "net1")); cniCode(err) != cni.ErrInvalidConfig {
		t.Errorf("multicast mac: %v, want code 7", err)
	}
	if _, err := r.Add(list(t, r, "1.0.0", `"mtu":-1`), r.Attach(pod, "net1")); cniCode(err) != cni.ErrInvalidConfig {
		t.Errorf("negative mtu: %v, want code 7", err)
	}
	pod.MustRun("ip", "link", "add", "net1", "type", "veth", "peer", "name", "net1p")
	l := list(t, r, "1.0.0", "")
	if _, err := r.Add(l, r.Attach(pod, "net1")); cniCode(err) != cni.ErrInvalidEnv {
		t.Errorf("taken ifname: %v, want code 4", err)
	}
	if pod.Link(t, "net1").Type() != "veth" {
		t.Error("the existing link was replaced")
	}
	a := r.Attach(pod, "net2")
	if _, err := r.Add(l, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	pod.Delete()
	if err := r.Del(l, a); err != nil {
		t.Errorf("DEL with the netns gone: %v", err)
	}
}

// TestCnitool runs the whole cycle through the reference cnitool with a
// MAC from CNI_ARGS.
func TestCnitool(t *testing.T) {
	r := node(t)
	l := list(t, r, "1.1.0", `"ipam":{"type":"host-local","ranges":[[{"subnet":"10.20.0.0/24"}]]}`)
	pod := r.Pod(t)
	if _, err := r.Cnitool("add", l.Name, pod, "CNI_ARGS=IgnoreUnknown=1;MAC=02:aa:bb:cc:dd:04"); err != nil {
		t.Fatal(err)
	}
	if mac := tapOf(t, pod, "eth0").Attrs().HardwareAddr.String(); mac != "02:aa:bb:cc:dd:04" {
		t.Errorf("MAC = %s, want CNI_ARGS's", mac)
	}
	if _, err := r.Cnitool("check", l.Name, pod, "CNI_ARGS=IgnoreUnknown=1;MAC=02:aa:bb:cc:dd:04"); err != nil {
		t.Error(err)
	}
	if _, err := r.Cnitool("del", l.Name, pod, "CNI_ARGS=IgnoreUnknown=1;MAC=02:aa:bb:cc:dd:04"); err != nil {
		t.Fatal(err)
	}
	if got := pod.Links(t); len(got) != 1 {
		t.Errorf("links left: %v", got)
	}
}

// TestLabelledHelper runs the child that creates a tap under an SELinux
// label (selinuxContext; this host has no SELinux to label with): exec'd
// in the pod's netns it makes the persistent tap there.
func TestLabelledHelper(t *testing.T) {
	r := node(t)
	pod := r.Pod(t)
	pod.MustRun(testnet.Binary(t), "tap", "--mktap", "tapx", fmt.Sprint(unix.IFF_TAP|unix.IFF_NO_PI), "-1", "-1")
	if tap := tapOf(t, pod, "tapx"); tap.NonPersist || tap.Flags&netlink.TUNTAP_NO_PI == 0 {
		t.Errorf("helper's tap: %+v", tap)
	}
	if _, err := pod.Run(testnet.Binary(t), "tap", "--mktap", "tapx"); err == nil {
		t.Error("helper with missing arguments succeeded")
	}
}

// TestSelinuxContextWithoutSelinux: on a kernel without SELinux (this
// host, the VM) a label cannot be set: ADD fails naming selinuxContext,
// as the reference's does, and leaves nothing in the pod.
func TestSelinuxContextWithoutSelinux(t *testing.T) {
	if _, err := os.Stat("/sys/fs/selinux/enforce"); err == nil {
		t.Skip("SELinux is enabled here")
	}
	r := node(t)
	pod := r.Pod(t)
	l := list(t, r, "1.0.0", `"selinuxContext":"system_u:system_r:container_t:s0"`)
	if _, err := r.Add(l, r.Attach(pod, "tap0")); cniCode(err) != cni.ErrInvalidConfig || !strings.Contains(err.Error(), "selinuxContext") {
		t.Errorf("ADD: %v, want code 7 naming selinuxContext", err)
	}
	if got := pod.Links(t); len(got) != 1 {
		t.Errorf("links left: %v", got)
	}
}

// TestMACPrecedence: runtimeConfig.mac (the mac capability) wins over
// CNI_ARGS MAC=, which wins over the config's mac, as in the reference.
func TestMACPrecedence(t *testing.T) {
	r := node(t)
	l := list(t, r, "1.0.0", `"mac":"02:aa:00:00:00:01","capabilities":{"mac":true}`)
	for _, c := range []struct {
		args [][2]string
		caps map[string]any
		want string
	}{
		{nil, nil, "02:aa:00:00:00:01"},
		{[][2]string{{"IgnoreUnknown", "1"}, {"MAC", "02:aa:00:00:00:02"}}, nil, "02:aa:00:00:00:02"},
		{[][2]string{{"IgnoreUnknown", "1"}, {"MAC", "02:aa:00:00:00:02"}}, map[string]any{"mac": "02:aa:00:00:00:03"}, "02:aa:00:00:00:03"},
	} {
		pod := r.Pod(t)
		a := r.Attach(pod, "tap0")
		a.Args, a.Caps = c.args, c.caps
		res, err := r.Add(l, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		cur, _ := current.NewResultFromResult(res)
		if got := tapOf(t, pod, "tap0").Attrs().HardwareAddr.String(); got != c.want || cur.Interfaces[0].Mac != c.want {
			t.Errorf("args %v caps %v: MAC %s, result %s, want %s", c.args, c.caps, got, cur.Interfaces[0].Mac, c.want)
		}
		if err := r.Check(l, a); err != nil {
			t.Errorf("CHECK: %v", err)
		}
		if err := r.Del(l, a); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	}
}
