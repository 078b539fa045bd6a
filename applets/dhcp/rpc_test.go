package dhcp

import (
	"bytes"
	"net"
	"net/http"
	"net/rpc"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// The wire tests pit our half of the protocol against Go's own net/rpc
// (which the reference uses on both sides), in both directions, with the
// reference's argument and reply types. They need no root.

// refDHCP is a net/rpc service shaped like the reference daemon's.
type refDHCP struct{ got *skel.CmdArgs }

func (d *refDHCP) Allocate(args *skel.CmdArgs, result *current.Result) error {
	d.got = args
	if args.IfName == "fail" {
		return errString("no lease for you")
	}
	res, _ := resultFromACK(testACK(), 7)
	*result = *res
	return nil
}

func (d *refDHCP) Release(args *skel.CmdArgs, reply *struct{}) error {
	d.got = args
	return nil
}

type errString string

func (e errString) Error() string { return string(e) }

func unixPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "s.sock")
}

// TestOurClientNetRPCServer: our client calls a net/rpc server served the
// way the reference daemon serves (rpc.HandleHTTP on a unix listener).
func TestOurClientNetRPCServer(t *testing.T) {
	srv := rpc.NewServer()
	svc := &refDHCP{}
	if err := srv.RegisterName("DHCP", svc); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(rpc.DefaultRPCPath, srv)
	path := unixPath(t)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go http.Serve(ln, mux)

	c, err := dialRPC(path, dialTimeout)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	args := &callArgs{ContainerID: "c1", Netns: "/run/netns/p", IfName: "eth0", Args: "A=1", Path: "/opt/cni/bin", StdinData: []byte(`{"x":1}`)}
	res := &current.Result{CNIVersion: "1.0.0"}
	if err := c.Call("DHCP.Allocate", args, res); err != nil {
		t.Fatalf("Allocate: %v", err)
	}
	if svc.got.ContainerID != "c1" || svc.got.Netns != "/run/netns/p" || svc.got.IfName != "eth0" ||
		svc.got.Args != "A=1" || svc.got.Path != "/opt/cni/bin" || string(svc.got.StdinData) != `{"x":1}` {
		t.Errorf("server got %+v", svc.got)
	}
	if res.CNIVersion != "1.0.0" || res.IPs[0].Address.String() != "10.1.2.3/24" || res.DNS.Domain != "example.test" ||
		res.Routes[0].Priority != 7 {
		t.Errorf("reply = %+v", res)
	}
	// The same connection carries a second call, and an error.
	args.IfName = "fail"
	err = c.Call("DHCP.Allocate", args, &current.Result{})
	if err == nil || err.Error() != "no lease for you" {
		t.Errorf("error call: %v", err)
	}
	if err := c.Call("DHCP.Release", args, &struct{}{}); err != nil {
		t.Errorf("Release: %v", err)
	}
	if err := c.Call("DHCP.Check", args, &current.Result{}); !unknownMethod(err) {
		t.Errorf("unknown method: %v", err)
	}
}

// TestNetRPCClientOurServer: net/rpc's DialHTTP (the reference plugin's
// client) calls our server.
func TestNetRPCClientOurServer(t *testing.T) {
	path := unixPath(t)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var got callArgs
	handlers := map[string]rpcHandler{
		"DHCP.Allocate": func(decode func(any) error) (any, error) {
			if err := decode(&got); err != nil {
				return nil, err
			}
			if got.IfName == "fail" {
				return nil, errString("no lease for you")
			}
			return resultFromACK(testACK(), 0)
		},
		"DHCP.Release": func(decode func(any) error) (any, error) {
			return struct{}{}, decode(&got)
		},
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serveRPC(conn, handlers, t.Logf)
		}
	}()

	c, err := rpc.DialHTTP("unix", path)
	if err != nil {
		t.Fatalf("DialHTTP: %v", err)
	}
	defer c.Close()
	args := &skel.CmdArgs{ContainerID: "c1", Netns: "/run/netns/p", IfName: "eth0", Args: "A=1", Path: "/p", StdinData: []byte("{}")}
	res := &current.Result{CNIVersion: "1.0.0"}
	if err := c.Call("DHCP.Allocate", args, res); err != nil {
		t.Fatalf("Allocate: %v", err)
	}
	if got.ContainerID != "c1" || got.Netns != "/run/netns/p" || got.Args != "A=1" || string(got.StdinData) != "{}" {
		t.Errorf("server got %+v", got)
	}
	if res.CNIVersion != "1.0.0" || res.IPs[0].Gateway.String() != "10.1.2.1" || len(res.DNS.Nameservers) != 2 {
		t.Errorf("reply = %+v", res)
	}
	args.IfName = "fail"
	if err := c.Call("DHCP.Allocate", args, &current.Result{}); err == nil || err.Error() != "no lease for you" {
		t.Errorf("error call: %v", err)
	}
	if err := c.Call("DHCP.Release", args, &struct{}{}); err != nil {
		t.Errorf("Release: %v", err)
	}
	if err := c.Call("DHCP.Nope", args, &struct{}{}); err == nil || !strings.Contains(err.Error(), "can't find method") {
		t.Errorf("unknown method: %v", err)
	}
	// The connection is still in step after all that.
	args.IfName = "eth0"
	if err := c.Call("DHCP.Allocate", args, &current.Result{}); err != nil {
		t.Errorf("Allocate after an error: %v", err)
	}
}

// TestHandshakeBytes: what goes on the wire before gob, byte for byte.
func TestHandshakeBytes(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	go serveRPC(server, nil, t.Logf)
	go client.Write([]byte("CONNECT /_goRPC_ HTTP/1.0\n\n"))
	buf := make([]byte, 64)
	n, err := client.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if want := "HTTP/1.0 200 Connected to Go RPC\n\n"; string(buf[:n]) != want {
		t.Errorf("server answered %q, want %q", buf[:n], want)
	}

	c2, s2 := net.Pipe()
	defer c2.Close()
	go serveRPC(s2, nil, t.Logf)
	go c2.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	var out bytes.Buffer
	n, _ = c2.Read(buf)
	out.Write(buf[:n])
	if !strings.HasPrefix(out.String(), "HTTP/1.0 405") {
		t.Errorf("a GET got %q", out.String())
	}
}

// TestOpenStoreStrays: a daemon killed while it wrote its lease file
// leaves the temporary file; the next daemon's openStore removes it and
// keeps the lease file.
func TestOpenStoreStrays(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "leases.json")
	if err := os.WriteFile(path, []byte(`{"version":1,"leases":[{"clientID":"c/n/eth0"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".leases.json.42"), []byte(`{"vers`), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := openStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.all()) != 1 {
		t.Errorf("leases %v", s.all())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != "leases.json" {
		t.Errorf("dir holds %v, want the lease file only", entries)
	}
}
