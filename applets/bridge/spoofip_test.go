package bridge_test

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestIPSpoofCheck: with macspoofchk a pod can neither send IPv4 from a
// neighbour's address (the node never receives it) nor poison the node's
// neighbour entry for that address through ARP, while its own traffic
// flows. Without macspoofchk the same attack works, which proves the test
// sees it. Hardening beyond the reference (its macspoofchk checks the
// source MAC only).
func TestIPSpoofCheck(t *testing.T) {
	for _, c := range []struct {
		name       string
		check      bool
		subnet, gw string
	}{
		{"macspoofchk", true, "10.93.0.0/24", "10.93.0.1"},
		{"without macspoofchk", false, "10.94.0.0/24", "10.94.0.1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			keys := `"bridge":"cni-ipspoof","isGateway":true,"ipam":` + e.hostLocal(c.subnet, "")
			if c.check {
				keys = `"macspoofchk":true,` + keys
			}
			l := e.net("ipspoof", "1.0.0", keys)
			attacker, victim := e.Pod(t), e.Pod(t)
			a1, a2 := e.Attach(attacker, "eth0"), e.Attach(victim, "eth0")
			e.add(l, a1)
			r2 := e.add(l, a2)
			victimIP := podIP(t, r2, true)
			victimMAC := r2.Interfaces[2].Mac
			if err := e.Node.Ping(victimIP); err != nil {
				t.Fatalf("node to victim: %v", err)
			}
			if err := attacker.Ping(c.gw); err != nil {
				t.Fatalf("attacker's own traffic: %v", err)
			}

			// The node listens on the gateway address.
			var srv net.PacketConn
			if err := e.Node.Do(func() (err error) {
				srv, err = net.ListenPacket("udp4", c.gw+":5555")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			got := make(chan string, 16)
			go func() {
				buf := make([]byte, 64)
				for {
					_, from, err := srv.ReadFrom(buf)
					if err != nil {
						return
					}
					got <- from.String()
				}
			}()

			// The attacker claims the victim's address and sends from it.
			attacker.MustRun("ip", "addr", "add", victimIP+"/32", "dev", "eth0")
			if err := attacker.Do(func() error {
				conn, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(victimIP)}, &net.UDPAddr{IP: net.ParseIP(c.gw), Port: 5555})
				if err != nil {
					return err
				}
				defer conn.Close()
				for i := 0; i < 5; i++ {
					_, _ = conn.Write([]byte("spoofed"))
					time.Sleep(100 * time.Millisecond)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			var received []string
			timeout := time.After(time.Second)
		drain:
			for {
				select {
				case from := <-got:
					received = append(received, from)
				case <-timeout:
					break drain
				}
			}
			neigh := e.Node.MustRun("ip", "neigh", "show", victimIP)
			poisoned := !strings.Contains(neigh, victimMAC)
			if c.check {
				if len(received) > 0 {
					t.Errorf("the node received packets from the spoofed source: %v", received)
				}
				if poisoned {
					t.Errorf("the node's neighbour entry for %s no longer holds the victim's MAC %s: %s", victimIP, victimMAC, neigh)
				}
				attacker.MustRun("ip", "addr", "del", victimIP+"/32", "dev", "eth0")
				if err := attacker.Ping(c.gw); err != nil {
					t.Errorf("the attacker's own traffic after the attempt: %v", err)
				}
				if err := e.Check(l.libcniList, a1); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			} else if len(received) == 0 && !poisoned {
				t.Errorf("without macspoofchk the spoof had no effect: the test cannot see one (neigh %s)", neigh)
			}
			e.del(l, a1)
			e.del(l, a2)
			if c.check && strings.Contains(e.nftRuleset(), "macspoofchk") {
				t.Errorf("rules left after DEL:\n%s", e.nftRuleset())
			}
		})
	}
}
