package portmap_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/testnet"
)

// world is a node with a machine outside it and a machine behind it:
//
//	outside (192.168.77.2, fd77::2) --ext0-- node (192.168.77.1, fd77::1)
//	node (10.99.0.254) --far0-- far (10.99.0.1): a host the node routes to
//
// Pods hang off the node's bridge, made by the chain under test.
type world struct {
	r       *testnet.Runtime
	outside *testnet.NS
	far     *testnet.NS
}

const (
	nodeIP  = "192.168.77.1"
	nodeIP6 = "fd77::1"
	farIP   = "10.99.0.1"
)

func newWorld(t *testing.T) *world {
	t.Helper()
	r := testnet.NewRuntime(t)
	r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
	w := &world{r: r, outside: testnet.NewNS(t, "outside"), far: testnet.NewNS(t, "far")}
	n := r.Node
	n.MustRun("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	n.MustRun("ip", "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", w.outside.Name)
	n.MustRun("ip", "addr", "add", nodeIP+"/24", "dev", "ext0")
	n.MustRun("ip", "addr", "add", nodeIP6+"/64", "dev", "ext0", "nodad")
	n.MustRun("ip", "link", "set", "ext0", "up")
	o := w.outside
	o.MustRun("ip", "addr", "add", "192.168.77.2/24", "dev", "eth0")
	o.MustRun("ip", "addr", "add", "fd77::2/64", "dev", "eth0", "nodad")
	o.MustRun("ip", "link", "set", "eth0", "up")
	o.MustRun("ip", "route", "add", "default", "via", nodeIP)
	o.MustRun("ip", "-6", "route", "add", "default", "via", nodeIP6)
	n.MustRun("ip", "link", "add", "far0", "type", "veth", "peer", "name", "eth0", "netns", w.far.Name)
	n.MustRun("ip", "addr", "add", "10.99.0.254/24", "dev", "far0")
	n.MustRun("ip", "link", "set", "far0", "up")
	w.far.MustRun("ip", "addr", "add", farIP+"/24", "dev", "eth0")
	w.far.MustRun("ip", "link", "set", "eth0", "up")
	w.far.MustRun("ip", "route", "add", "default", "via", "10.99.0.254")
	return w
}

// serve runs a TCP and a UDP server on port in ns that answer every
// connection or datagram with name, until the test ends.
func serve(t *testing.T, ns *testnet.NS, port int, name string) {
	t.Helper()
	var tcp []net.Listener
	var udp []net.PacketConn
	err := ns.Do(func() error {
		for _, nw := range []string{"tcp4", "tcp6"} {
			l, err := net.Listen(nw, fmt.Sprintf(":%d", port))
			if err != nil {
				return err
			}
			tcp = append(tcp, l)
		}
		for _, nw := range []string{"udp4", "udp6"} {
			c, err := net.ListenPacket(nw, fmt.Sprintf(":%d", port))
			if err != nil {
				return err
			}
			udp = append(udp, c)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("serve in %s: %v", ns.Name, err)
	}
	var wg sync.WaitGroup
	for _, l := range tcp {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Write([]byte(name))
				c.Close()
			}
		}()
	}
	for _, c := range udp {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for {
				_, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				c.WriteTo([]byte(name), from)
			}
		}()
	}
	t.Cleanup(func() {
		for _, l := range tcp {
			l.Close()
		}
		for _, c := range udp {
			c.Close()
		}
		wg.Wait()
	})
}

// ask connects from ns to addr:port over proto ("tcp" or "udp") and
// returns who answered.
func ask(ns *testnet.NS, proto, addr string, port int) (string, error) {
	var got string
	err := ns.Do(func() error {
		hp := net.JoinHostPort(addr, fmt.Sprint(port))
		if proto == "tcp" {
			c, err := net.DialTimeout("tcp", hp, 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			b, err := io.ReadAll(c)
			got = string(b)
			return err
		}
		c, err := net.Dial("udp", hp)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 64)
		for try := 0; try < 3; try++ {
			c.SetDeadline(time.Now().Add(700 * time.Millisecond))
			if _, err := c.Write([]byte("who")); err != nil {
				return err
			}
			n, err := c.Read(buf)
			if err == nil {
				got = string(buf[:n])
				return nil
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return err
			}
		}
		return errors.New("no UDP answer")
	})
	return got, err
}

func expect(t *testing.T, from *testnet.NS, proto, addr string, port int, want string) {
	t.Helper()
	got, err := ask(from, proto, addr, port)
	if err != nil || got != want {
		t.Errorf("%s %s:%d from %s: got %q, %v; want %q", proto, addr, port, from.Name, got, err, want)
	}
}

func expectNot(t *testing.T, from *testnet.NS, proto, addr string, port int, not string) {
	t.Helper()
	got, err := ask(from, proto, addr, port)
	if err == nil && got == not {
		t.Errorf("%s %s:%d from %s: %q answered, it must not", proto, addr, port, from.Name, got)
	}
}

// settle waits until no IPv6 address of the namespace is tentative (the
// reference bridge returns before DAD is done).
func settle(t *testing.T, ns *testnet.NS) {
	t.Helper()
	for i := 0; i < 50; i++ {
		if out := ns.MustRun("ip", "-6", "addr", "show", "tentative"); strings.TrimSpace(out) == "" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: IPv6 addresses still tentative", ns.Name)
}

// rules returns what the node's firewall holds, for leak checks.
func rules(t *testing.T, r *testnet.Runtime) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}} {
		out, err := r.Node.Run(cmd[0], cmd[1:]...)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(out)
	}
	return b.String()
}
