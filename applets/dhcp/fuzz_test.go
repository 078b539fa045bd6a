package dhcp

import (
	"bytes"
	"encoding/gob"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/cnibox/cnibox/shared/cni"
)

// The DHCP server is on the pod's network, not the node's: whatever it
// sends is untrusted. These targets feed arbitrary DHCP packets to what
// the daemon makes of them (the CNI result, the lease timers), arbitrary
// configs and CNI_ARGS to what the plugin and the daemon parse and send,
// and arbitrary bytes to the daemon's end of the socket.
// Seeds: f.Add below and testdata/fuzz/Fuzz*.

// fuzzACK is a DHCPACK with every option resultFromACK reads.
func fuzzACK() []byte {
	ack, _ := dhcpv4.New(
		dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
		dhcpv4.WithYourIP(net.IPv4(10, 1, 2, 3)),
		dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithRouter(net.IPv4(10, 1, 2, 1)),
		dhcpv4.WithOption(dhcpv4.OptDNS(net.IPv4(10, 1, 2, 53))),
		dhcpv4.WithOption(dhcpv4.OptDomainName("example.test")),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionDNSDomainSearchList, []byte("\x03foo\x04test\x00"))),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionStaticRoutingTable, []byte{10, 0, 0, 0, 10, 1, 2, 1})),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 1, 2, 1))),
		dhcpv4.WithLeaseTime(3600),
	)
	return ack.ToBytes()
}

func withOption(code uint8, data []byte) []byte {
	m, _ := dhcpv4.FromBytes(fuzzACK())
	m.UpdateOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(code), data))
	return m.ToBytes()
}

// canonical says whether m is a contiguous IPv4 mask.
func canonical(m net.IPMask) bool {
	ones, bits := m.Size()
	return len(m) == net.IPv4len && bits == 32 && bytes.Equal(m, net.CIDRMask(ones, 32))
}

// FuzzResultFromACK: whatever DHCPACK a server sends, the daemon either
// refuses it or makes a result the kernel and every runtime accept: a
// unicast IPv4 address with a contiguous mask, routes to network
// addresses (the kernel refuses a route with host bits) through IPv4
// gateways, nameservers that are addresses, domain and search names
// without spaces or line breaks (runtimes write them into resolv.conf);
// and the result survives JSON (what the plugin prints), every older
// cniVersion, and gob (what the daemon sends the plugin).
func FuzzResultFromACK(f *testing.F) {
	f.Add(fuzzACK(), 0)
	f.Add(withOption(121, []byte{24, 192, 168, 5, 10, 1, 2, 1, 0, 10, 1, 2, 1, 32, 1, 2, 3, 4, 0, 0, 0, 0}), 100)
	f.Add(withOption(121, []byte{9, 10, 255, 10, 1, 2, 1}), 0)     // host bits set in the destination
	f.Add(withOption(1, []byte{255, 0, 255, 0}), 0)                // non-contiguous mask
	f.Add(withOption(15, []byte("x.test\nnameserver 6.6.6.6")), 0) // resolv.conf injection
	f.Add(withOption(119, []byte("\x0cx\nnameserver\x00")), 0)     // the same through the search list
	f.Add(withOption(33, []byte{192, 168, 1, 7, 0, 0, 0, 0, 224, 0, 0, 0, 1, 1, 1, 1}), 1)
	f.Add(withOption(51, []byte{0, 0, 0, 0}), 0)
	f.Fuzz(func(t *testing.T, packet []byte, priority int) {
		ack, err := dhcpv4.FromBytes(packet)
		if err != nil {
			return
		}
		res, err := resultFromACK(ack, priority)
		if err != nil {
			return
		}
		if len(res.IPs) != 1 {
			t.Fatalf("%d addresses", len(res.IPs))
		}
		a := res.IPs[0].Address
		if len(a.IP) != net.IPv4len || !a.IP.IsGlobalUnicast() && !a.IP.IsPrivate() && !a.IP.IsLinkLocalUnicast() {
			t.Fatalf("address %v is not a unicast IPv4 address", a.IP)
		}
		if !canonical(a.Mask) {
			t.Fatalf("address %v: mask %v is not contiguous", a.IP, a.Mask)
		}
		if gw := res.IPs[0].Gateway; gw != nil && len(gw) != net.IPv4len {
			t.Fatalf("gateway %v", gw)
		}
		for _, r := range res.Routes {
			if len(r.Dst.IP) != net.IPv4len || !canonical(r.Dst.Mask) || !r.Dst.IP.Equal(r.Dst.IP.Mask(r.Dst.Mask)) {
				t.Fatalf("route to %v is not to an IPv4 network address", r.Dst)
			}
			if (r.GW == nil) == (r.Scope == nil) || r.GW != nil && len(r.GW) != net.IPv4len {
				t.Fatalf("route to %v: gateway %v, scope %v", r.Dst, r.GW, r.Scope)
			}
			if r.Priority != priority {
				t.Fatalf("route to %v: priority %d, want %d", r.Dst, r.Priority, priority)
			}
		}
		for _, s := range res.DNS.Nameservers {
			if net.ParseIP(s) == nil {
				t.Fatalf("nameserver %q", s)
			}
		}
		for _, name := range append([]string{res.DNS.Domain}, res.DNS.Search...) {
			if strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
				t.Fatalf("DNS name %q", name)
			}
		}

		res.CNIVersion = "1.0.0"
		data, err := json.Marshal(res)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		back, err := current.NewResult(data)
		if err != nil {
			t.Fatalf("the result does not parse back: %v\n%s", err, data)
		}
		again, _ := json.Marshal(back)
		if !bytes.Equal(data, again) {
			t.Fatalf("JSON round trip:\n%s\n%s", data, again)
		}
		for _, v := range []string{"0.4.0", "0.3.1", "0.2.0"} {
			if _, err := res.GetAsVersion(v); err != nil {
				t.Fatalf("as %s: %v", v, err)
			}
		}
		var buf bytes.Buffer
		if err := gob.NewEncoder(&buf).Encode(res); err != nil {
			t.Fatalf("gob: %v", err)
		}
		var decoded current.Result
		if err := gob.NewDecoder(&buf).Decode(&decoded); err != nil {
			t.Fatalf("gob decode: %v", err)
		}
	})
}

// FuzzLeaseTimes: whatever lease, renewal and rebinding times a server
// sends (0, 1 s, infinity, T1 > T2 > lease...), renewal comes before
// rebinding before expiry, and not sooner than a second after the lease
// was bound: a lease of 0 seconds must not make the daemon renew in a
// tight loop.
func FuzzLeaseTimes(f *testing.F) {
	f.Add(uint32(3600), uint32(0), uint32(0), false, false)
	f.Add(uint32(6), uint32(2), uint32(4), true, true)
	f.Add(uint32(0), uint32(0), uint32(0), true, true)
	f.Add(uint32(0xffffffff), uint32(0), uint32(0), true, false)
	f.Add(uint32(0xffffffff), uint32(10), uint32(0xfffffffe), true, true)
	f.Add(uint32(100), uint32(200), uint32(300), true, true)
	f.Add(uint32(3600), uint32(0), uint32(1), false, true) // T2 before the default T1
	f.Fuzz(func(t *testing.T, leaseS, t1S, t2S uint32, hasT1, hasT2 bool) {
		mods := []dhcpv4.Modifier{dhcpv4.WithLeaseTime(leaseS)}
		if hasT1 {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(time.Duration(t1S)*time.Second)))
		}
		if hasT2 {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(time.Duration(t2S)*time.Second)))
		}
		ack, err := dhcpv4.New(mods...)
		if err != nil {
			t.Fatal(err)
		}
		bound := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		l := &lease{ack: ack, bound: bound}
		t1, t2, exp := l.times()
		if t1.Sub(bound) < time.Second || t2.Before(t1) || exp.Before(t2) {
			t.Fatalf("lease %d s, T1 %d s (%v), T2 %d s (%v): renew at +%v, rebind at +%v, expire at +%v",
				leaseS, t1S, hasT1, t2S, hasT2, t1.Sub(bound), t2.Sub(bound), exp.Sub(bound))
		}
	})
}

// FuzzConfig: any IPAM config and CNI_ARGS are refused with a CNI error
// other than 999 (naming the field) or become DHCP messages that encode
// and decode again, whose every option fits its one-byte length, and
// whose client identifier is the attachment's.
func FuzzConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"type":"dhcp","daemonSocketPath":"/run/x.sock","priority":5,"request":[{"skipDefault":true},{"option":"routers"},{"option":"121"}],"provide":[{"option":"host-name","fromArg":"K8S_POD_NAME"},{"option":"dhcp-client-identifier","value":"me"}]}}`),
		"IgnoreUnknown=1;K8S_POD_NAME=web-0", "cid", "eth0")
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"type":"dhcp","priority":-1,"request":[{"option":"255"}],"provide":[{"option":"0","value":""}]}}`), "", "c", "eth0")
	f.Add([]byte(`{"name":"n","ipam":{"provide":[{"option":"12","fromArg":"A"}]}}`), "A="+strings.Repeat("x", 300), strings.Repeat("c", 300), "eth0")
	f.Add([]byte(`{"ipam":{"request":"routers"}}`), ";;==;", "", "")
	f.Fuzz(func(t *testing.T, stdin []byte, args, containerID, ifName string) {
		conf, err := parseConfig(stdin)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code == 0 || e.Code == cni.ErrInternal {
				t.Fatalf("refusal is not a CNI config error: %#v", err)
			}
			return
		}
		id := clientID(containerID, conf.Name, ifName)
		if len(id) > 254 {
			t.Fatalf("client ID of %d bytes", len(id))
		}
		m, err := dhcpv4.NewDiscovery(net.HardwareAddr{2, 0, 0, 0, 0, 1}, modifiers(&conf.IPAM, args, id, false)...)
		if err != nil {
			t.Fatalf("build DISCOVER: %v", err)
		}
		for code, data := range m.Options {
			if len(data) > 255 {
				t.Fatalf("option %d of %d bytes", code, len(data))
			}
		}
		back, err := dhcpv4.FromBytes(m.ToBytes())
		if err != nil {
			t.Fatalf("DISCOVER does not decode: %v", err)
		}
		if got := back.GetOneOption(dhcpv4.OptionClientIdentifier); len(got) == 0 || got[0] != 0 {
			t.Fatalf("client identifier %q", got)
		}
		if back.MessageType() != dhcpv4.MessageTypeDiscover {
			// A provided option 53 must not turn the DISCOVER into something else.
			for _, p := range conf.IPAM.Provide {
				if c, _ := parseOption(p.Option); c == 53 {
					return
				}
			}
			t.Fatalf("message type %v", back.MessageType())
		}
	})
}

// FuzzServeRPC: whatever bytes reach the daemon's socket, serveRPC
// answers or hangs up, and returns; it never panics and never calls a
// method with arguments it could not decode.
func FuzzServeRPC(f *testing.F) {
	var call bytes.Buffer
	call.WriteString("CONNECT " + rpcPath + " HTTP/1.0\n\n")
	enc := gob.NewEncoder(&call)
	enc.Encode(&rpcRequest{ServiceMethod: "DHCP.Allocate", Seq: 1})
	enc.Encode(&callArgs{ContainerID: "c", Netns: "/x", IfName: "eth0", StdinData: []byte(`{"name":"n"}`)})
	enc.Encode(&rpcRequest{ServiceMethod: "DHCP.Nope", Seq: 2})
	enc.Encode(&callArgs{})
	f.Add(call.Bytes())
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("CONNECT " + rpcPath + " HTTP/1.0\n\n\x03\xff\x81\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		server, client := net.Pipe()
		handlers := map[string]rpcHandler{
			"DHCP.Allocate": func(decode func(any) error) (any, error) {
				a := &callArgs{}
				if err := decode(a); err != nil {
					return nil, err
				}
				if _, err := parseConfig(a.StdinData); err != nil {
					return nil, err
				}
				return &current.Result{CNIVersion: "1.0.0"}, nil
			},
			"DHCP.Status": func(func(any) error) (any, error) { return struct{}{}, nil },
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			serveRPC(server, handlers, func(string, ...any) {})
		}()
		go io.Copy(io.Discard, client)
		client.SetWriteDeadline(time.Now().Add(5 * time.Second))
		client.Write(data)
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("serveRPC did not return after the client hung up")
		}
	})
}
