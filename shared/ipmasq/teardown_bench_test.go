package ipmasq

import (
	"fmt"
	"net"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// BenchmarkTeardownMany: masquerade teardown of an attachment with n
// addresses (half IPv4, half IPv6), for each backend; the setup before
// each teardown is not timed. Teardown must be linear in the attachment.
//
//	go test -run '^$' -bench TeardownMany -benchtime 1x ./shared/ipmasq/
func BenchmarkTeardownMany(b *testing.B) {
	for _, backend := range []string{IPTables, NFTables} {
		for _, n := range []int{1000, 10000} {
			b.Run(fmt.Sprintf("%s/%d", backend, n), func(b *testing.B) {
				node := testnet.NewNS(b, "node")
				a := Attachment{Network: "mbench", ContainerID: "big", IfName: "eth0"}
				var nets []*net.IPNet
				for i := 0; i < n; i++ {
					s := fmt.Sprintf("10.%d.%d.%d/8", 64+i/65536, i/256%256, i%256)
					if i%2 == 1 {
						s = fmt.Sprintf("fd64::%x:%x/64", i/65536, i%65536)
					}
					ip, ipn, _ := net.ParseCIDR(s)
					ipn.IP = ip
					nets = append(nets, ipn)
				}
				for b.Loop() {
					b.StopTimer()
					if err := node.Do(func() error { return Setup(backend, a, nets) }); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					if err := node.Do(func() error { return Teardown(a, nets) }); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
