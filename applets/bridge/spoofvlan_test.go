package bridge_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestIPSpoofCheckTagged: the IP and ARP anti-spoofing of macspoofchk
// also holds for VLAN-tagged frames. From a pod on a trunk port (and on a
// plain port of a bridge without VLAN filtering, which forwards tagged
// frames as they are), frames tagged 802.1Q, 802.1ad and doubly tagged,
// carrying IPv4, IPv6 and ARP from a neighbour's address, never reach a
// listener on the neighbour's port, while the pod's tagged frames from
// its own addresses do. Without macspoofchk every frame arrives, which
// proves the listener sees them. The frames are written with a packet
// socket (no VLAN interfaces needed: the bridge's VLAN filtering is
// enough).
func TestIPSpoofCheckTagged(t *testing.T) {
	testTaggedSpoof(t, []taggedCase{
		{"plain port", true, false, 1},
		{"plain port without macspoofchk", false, false, 2},
	})
}

// TestIPSpoofCheckTrunk is TestIPSpoofCheckTagged on a vlanTrunk port
// (VLANs 10 and 20; the bridge filters VLANs).
func TestIPSpoofCheckTrunk(t *testing.T) {
	testnet.RequireKernel(t, "bridge-vlan")
	testTaggedSpoof(t, []taggedCase{
		{"trunk", true, true, 3},
		{"trunk without macspoofchk", false, true, 4},
	})
}

type taggedCase struct {
	name  string
	check bool
	trunk bool
	n     int // address plan: 10.95.<n>.0/24, fd95:<n>::/64
}

func testTaggedSpoof(t *testing.T, cases []taggedCase) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			keys := fmt.Sprintf(`"bridge":"cni-tagspoof","ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.95.%d.0/24"}],[{"subnet":"fd95:%d::/64"}]]}`, e.dataDir, c.n, c.n)
			if c.check {
				keys += `,"macspoofchk":true`
			}
			if c.trunk {
				keys += `,"vlanTrunk":[{"id":10},{"id":20}]`
			}
			l := e.net("tagspoof", "1.0.0", keys)
			attacker, victim := e.Pod(t), e.Pod(t)
			a1, a2 := e.Attach(attacker, "eth0"), e.Attach(victim, "eth0")
			r1, r2 := e.add(l, a1), e.add(l, a2)
			own4, own6 := netip.MustParseAddr(podIP(t, r1, true)), netip.MustParseAddr(podIP(t, r1, false))
			vic4, vic6 := netip.MustParseAddr(podIP(t, r2, true)), netip.MustParseAddr(podIP(t, r2, false))
			ownMAC, _ := net.ParseMAC(r1.Interfaces[2].Mac)
			vicMAC, _ := net.ParseMAC(r2.Interfaces[2].Mac)
			dst4, dst6 := netip.MustParseAddr(fmt.Sprintf("10.95.%d.200", c.n)), netip.MustParseAddr(fmt.Sprintf("fd95:%d::200", c.n))

			q := func(vid uint16) tag { return tag{unix.ETH_P_8021Q, vid} }
			ad := func(vid uint16) tag { return tag{unix.ETH_P_8021AD, vid} }
			frames := []struct {
				name  string
				spoof bool
				tags  []tag
				body  func(marker string) (uint16, []byte)
			}{
				{"own IPv4 tagged", false, []tag{q(10)}, udp4(own4, dst4)},
				{"own IPv6 tagged", false, []tag{q(10)}, udp6(own6, dst6)},
				{"own ARP tagged", false, []tag{q(10)}, arpReply(ownMAC, own4, vicMAC, vic4)},
				{"spoofed IPv4 untagged", true, nil, udp4(vic4, dst4)},
				{"spoofed IPv4 802.1Q", true, []tag{q(10)}, udp4(vic4, dst4)},
				{"spoofed IPv6 802.1Q", true, []tag{q(10)}, udp6(vic6, dst6)},
				{"spoofed ARP 802.1Q", true, []tag{q(10)}, arpReply(ownMAC, vic4, vicMAC, vic4)},
				{"spoofed IPv4 802.1ad", true, []tag{ad(10)}, udp4(vic4, dst4)},
				{"spoofed ARP 802.1ad", true, []tag{ad(10)}, arpReply(ownMAC, vic4, vicMAC, vic4)},
				{"spoofed IPv4 802.1Q in 802.1Q", true, []tag{q(10), q(20)}, udp4(vic4, dst4)},
				{"spoofed IPv6 802.1Q in 802.1ad", true, []tag{ad(10), q(20)}, udp6(vic6, dst6)},
				{"spoofed ARP 802.1Q in 802.1ad", true, []tag{ad(10), q(20)}, arpReply(ownMAC, vic4, vicMAC, vic4)},
			}

			// The listener: every frame the victim's eth0 receives.
			var rx *packet.Conn
			if err := victim.Do(func() error {
				ifc, err := net.InterfaceByName("eth0")
				if err != nil {
					return err
				}
				rx, err = packet.Listen(ifc, packet.Raw, unix.ETH_P_ALL, nil)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var seen [][]byte
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, 2048)
				for {
					n, _, err := rx.ReadFrom(buf)
					if err != nil {
						return
					}
					mu.Lock()
					seen = append(seen, append([]byte(nil), buf[:n]...))
					mu.Unlock()
				}
			}()

			if err := attacker.Do(func() error {
				ifc, err := net.InterfaceByName("eth0")
				if err != nil {
					return err
				}
				tx, err := packet.Listen(ifc, packet.Raw, 0, nil)
				if err != nil {
					return err
				}
				defer tx.Close()
				for i, f := range frames {
					typ, body := f.body(fmt.Sprintf("cnibox-tagspoof-%02d", i))
					frame := ethernet(vicMAC, ownMAC, f.tags, typ, body)
					for range 3 {
						if _, err := tx.WriteTo(frame, &packet.Addr{HardwareAddr: vicMAC}); err != nil {
							return fmt.Errorf("send %s: %w", f.name, err)
						}
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
			rx.Close()
			<-done

			mu.Lock()
			defer mu.Unlock()
			for i, f := range frames {
				marker := []byte(fmt.Sprintf("cnibox-tagspoof-%02d", i))
				arrived := false
				for _, s := range seen {
					arrived = arrived || bytes.Contains(s, marker)
				}
				switch {
				case f.spoof && c.check && arrived:
					t.Errorf("%s: reached the neighbour's port", f.name)
				case !arrived && (!f.spoof || !c.check):
					t.Errorf("%s: did not reach the neighbour's port", f.name)
				}
			}
			if c.check {
				if err := e.Check(l.libcniList, a1); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			e.del(l, a1)
			e.del(l, a2)
			if strings.Contains(e.nftRuleset(), "macspoofchk") {
				t.Errorf("rules left after DEL:\n%s", e.nftRuleset())
			}
		})
	}
}

type tag struct {
	tpid uint16
	vid  uint16
}

// ethernet is a frame from src to dst with the given tags, outermost
// first, around a payload of ethertype typ.
func ethernet(dst, src net.HardwareAddr, tags []tag, typ uint16, payload []byte) []byte {
	b := append(append([]byte(nil), dst...), src...)
	for _, t := range tags {
		b = binary.BigEndian.AppendUint16(b, t.tpid)
		b = binary.BigEndian.AppendUint16(b, t.vid)
	}
	b = binary.BigEndian.AppendUint16(b, typ)
	return append(b, payload...)
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// udp4 is an IPv4 UDP packet from src to dst carrying the marker.
func udp4(src, dst netip.Addr) func(string) (uint16, []byte) {
	return func(marker string) (uint16, []byte) {
		u := udp(marker)
		h := make([]byte, 20)
		h[0], h[8], h[9] = 0x45, 64, unix.IPPROTO_UDP
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(u)))
		copy(h[12:], src.AsSlice())
		copy(h[16:], dst.AsSlice())
		binary.BigEndian.PutUint16(h[10:], checksum(h))
		return unix.ETH_P_IP, append(h, u...)
	}
}

// udp6 is an IPv6 UDP packet from src to dst carrying the marker.
func udp6(src, dst netip.Addr) func(string) (uint16, []byte) {
	return func(marker string) (uint16, []byte) {
		u := udp(marker)
		h := make([]byte, 40)
		h[0], h[6], h[7] = 0x60, unix.IPPROTO_UDP, 64
		binary.BigEndian.PutUint16(h[4:], uint16(len(u)))
		copy(h[8:], src.AsSlice())
		copy(h[24:], dst.AsSlice())
		return unix.ETH_P_IPV6, append(h, u...)
	}
}

// udp is a UDP header and the marker, without checksum (a listener on a
// packet socket does not verify it).
func udp(marker string) []byte {
	u := make([]byte, 8, 8+len(marker))
	binary.BigEndian.PutUint16(u[0:], 5555)
	binary.BigEndian.PutUint16(u[2:], 5555)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(marker)))
	return append(u, marker...)
}

// arpReply is an ARP reply claiming that spa is at sha, to tha/tpa,
// followed by the marker as trailing padding.
func arpReply(sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) func(string) (uint16, []byte) {
	return func(marker string) (uint16, []byte) {
		b := []byte{0, 1, 8, 0, 6, 4, 0, 2}
		b = append(b, sha...)
		b = append(b, spa.AsSlice()...)
		b = append(b, tha...)
		b = append(b, tpa.AsSlice()...)
		return unix.ETH_P_ARP, append(b, marker...)
	}
}
