// Package traffic proves connectivity in tests: TCP and UDP servers that
// answer with a name, run inside a test netns, and clients that ask them
// from another one.
package traffic

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// Serve runs a TCP and a UDP server on port in ns that answer every
// connection or datagram with name, until the test ends.
func Serve(t testing.TB, ns *testnet.NS, port int, name string) {
	serve(t, ns, port, func(net.Addr) string { return name })
}

// ServePeer is Serve whose servers answer with the client's address as
// they see it (to tell whether a connection was masqueraded).
func ServePeer(t testing.TB, ns *testnet.NS, port int) {
	serve(t, ns, port, func(a net.Addr) string {
		host, _, _ := net.SplitHostPort(a.String())
		return host
	})
}

func serve(t testing.TB, ns *testnet.NS, port int, answer func(net.Addr) string) {
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
				c.Write([]byte(answer(c.RemoteAddr())))
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
				c.WriteTo([]byte(answer(from)), from)
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

// Ask connects from ns to addr:port over proto ("tcp" or "udp") and
// returns who answered.
func Ask(ns *testnet.NS, proto, addr string, port int) (string, error) {
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

// Expect fails the test unless want answers proto addr:port from ns.
func Expect(t testing.TB, from *testnet.NS, proto, addr string, port int, want string) {
	t.Helper()
	got, err := Ask(from, proto, addr, port)
	if err != nil || got != want {
		t.Errorf("%s %s:%d from %s: got %q, %v; want %q", proto, addr, port, from.Name, got, err, want)
	}
}

// ExpectNot fails the test if not answers proto addr:port from ns.
func ExpectNot(t testing.TB, from *testnet.NS, proto, addr string, port int, not string) {
	t.Helper()
	got, err := Ask(from, proto, addr, port)
	if err == nil && got == not {
		t.Errorf("%s %s:%d from %s: %q answered, it must not", proto, addr, port, from.Name, got)
	}
}

// Settle waits until no IPv6 address of the namespace is tentative (the
// reference bridge returns before DAD is done).
func Settle(t testing.TB, ns *testnet.NS) {
	t.Helper()
	for i := 0; i < 50; i++ {
		if out := ns.MustRun("ip", "-6", "addr", "show", "tentative"); strings.TrimSpace(out) == "" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: IPv6 addresses still tentative", ns.Name)
}
