package dhcp

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func testACK() *dhcpv4.DHCPv4 {
	ack, _ := dhcpv4.New(
		dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
		dhcpv4.WithYourIP(net.IPv4(10, 1, 2, 3)),
		dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithRouter(net.IPv4(10, 1, 2, 1)),
		dhcpv4.WithOption(dhcpv4.OptDNS(net.IPv4(10, 1, 2, 53), net.IPv4(10, 1, 2, 54))),
		dhcpv4.WithOption(dhcpv4.OptDomainName("example.test")),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 1, 2, 1))),
		dhcpv4.WithLeaseTime(3600),
	)
	return ack
}

func TestResultFromACK(t *testing.T) {
	res, err := resultFromACK(testACK(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.IPs[0].Address.String(); got != "10.1.2.3/24" {
		t.Errorf("address %s", got)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW.String() != "10.1.2.1" {
		t.Errorf("routes %v", res.Routes)
	}
	if strings.Join(res.DNS.Nameservers, ",") != "10.1.2.53,10.1.2.54" || res.DNS.Domain != "example.test" {
		t.Errorf("dns %+v", res.DNS)
	}

	noMask := testACK()
	noMask.Options.Del(dhcpv4.OptionSubnetMask)
	if _, err := resultFromACK(noMask, 0); err == nil || !strings.Contains(err.Error(), "subnet mask") {
		t.Errorf("no mask: %v", err)
	}
}

func TestStaticRoutesClassful(t *testing.T) {
	data := []byte{
		10, 0, 0, 0, 1, 1, 1, 1, // class A network
		172, 16, 0, 0, 2, 2, 2, 2, // class B network
		192, 168, 5, 0, 3, 3, 3, 3, // class C network
		10, 0, 0, 9, 4, 4, 4, 4, // a host inside class A
	}
	var got []string
	for _, r := range staticRoutes(data) {
		got = append(got, r.Dst.String()+">"+r.GW.String())
	}
	want := "10.0.0.0/8>1.1.1.1 172.16.0.0/16>2.2.2.2 192.168.5.0/24>3.3.3.3 10.0.0.9/32>4.4.4.4"
	if strings.Join(got, " ") != want {
		t.Errorf("got %v, want %s", got, want)
	}
}

func TestModifiers(t *testing.T) {
	conf := &IPAMConfig{
		Request: []RequestOption{{SkipDefault: true}, {Option: "routers"}, {Option: "119"}},
		Provide: []ProvideOption{{Option: "host-name", FromArg: "K8S_POD_NAME"}, {Option: "vendor-class-identifier", Value: "v"}, {Option: "user-class", FromArg: "MISSING"}},
	}
	m, err := dhcpv4.New(modifiers(conf, "IgnoreUnknown=1;K8S_POD_NAME=web-0", "c/n/eth0", true)...)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.ParameterRequestList().String(); !strings.Contains(got, "Router") || strings.Contains(got, "Subnet Mask") {
		t.Errorf("PRL %s", got)
	}
	if m.HostName() != "web-0" || m.ClassIdentifier() != "v" || m.GetOneOption(dhcpv4.OptionUserClassInformation) != nil {
		t.Errorf("provided: host %q class %q", m.HostName(), m.ClassIdentifier())
	}
	if string(m.GetOneOption(dhcpv4.OptionClientIdentifier)) != "\x00c/n/eth0" {
		t.Errorf("client id %q", m.GetOneOption(dhcpv4.OptionClientIdentifier))
	}
	if !m.IsBroadcast() {
		t.Error("broadcast flag not set")
	}
}

func TestTimers(t *testing.T) {
	first, tries := retransmissions(10 * time.Second)
	if first != 2*time.Second || tries != 2 {
		t.Errorf("retransmissions(10s) = %v, %d", first, tries)
	}
	if first, tries := retransmissions(time.Second); first != time.Second || tries != 1 {
		t.Errorf("retransmissions(1s) = %v, %d", first, tries)
	}
	for n := 1; n < 20; n++ {
		w := backoff(n, 62*time.Second)
		if w < 500*time.Millisecond || w > 63*time.Second {
			t.Errorf("backoff(%d) = %v", n, w)
		}
		if n <= 4 && w > 3*time.Second {
			t.Errorf("backoff(%d) = %v, want about 2s", n, w)
		}
	}
	now := time.Now()
	if w := retryWait(now, now.Add(10*time.Minute), now.Add(20*time.Minute), 1, time.Minute); w < 5*time.Minute || w > 5*time.Minute+time.Second {
		t.Errorf("retryWait 10 min before T2 = %v, want 5 min", w)
	}
	if w := retryWait(now, now.Add(30*time.Second), now.Add(time.Hour), 1, time.Minute); w > 31*time.Second {
		t.Errorf("retryWait 30 s before T2 = %v, want at most 30 s", w)
	}
}

func TestRenewRequest(t *testing.T) {
	ack := testACK()
	ack.ClientHWAddr = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	req, err := renewRequest(ack, &IPAMConfig{Provide: []ProvideOption{{Option: "50", Value: "x"}}}, "", "c/n/eth0")
	if err != nil {
		t.Fatal(err)
	}
	if req.MessageType() != dhcpv4.MessageTypeRequest || !req.ClientIPAddr.Equal(ack.YourIPAddr) || req.IsBroadcast() {
		t.Errorf("renew: type %v ciaddr %v broadcast %v", req.MessageType(), req.ClientIPAddr, req.IsBroadcast())
	}
	if req.Options.Has(dhcpv4.OptionRequestedIPAddress) || req.Options.Has(dhcpv4.OptionServerIdentifier) {
		t.Errorf("renew carries requested-IP or server-ID: %s", req.Summary())
	}
	if req.TransactionID == ack.TransactionID || req.ClientHWAddr.String() != "02:00:00:00:00:01" {
		t.Errorf("renew xid %v (ack %v), chaddr %v", req.TransactionID, ack.TransactionID, req.ClientHWAddr)
	}
}
