package flannel

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/cni"
)

func writeEnv(t *testing.T, lines ...string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "subnet.env")
	if err := os.WriteFile(f, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func request(conf string) *cni.Request {
	return &cni.Request{Config: []byte(conf), Name: "cbr0", Version: "1.0.0"}
}

// TestDelegateConfig: the rendered delegate config is byte for byte what
// flannel-io/cni-plugin hands its delegate and saves in dataDir (the
// expectations are testdata/field/k3s's delegate-bridge-* cases, recorded
// from the reference's rendering), so a node switches either way.
func TestDelegateConfig(t *testing.T) {
	vxlan := []string{"FLANNEL_NETWORK=10.42.0.0/16", "FLANNEL_SUBNET=10.42.0.1/24", "FLANNEL_MTU=1450", "FLANNEL_IPMASQ=true"}
	k3s := `{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"forceAddress":true,"isDefaultGateway":true}}`
	for _, tc := range []struct {
		name, conf string
		env        []string
		want       string
	}{{
		name: "k3s vxlan",
		conf: k3s,
		env:  vxlan,
		want: `{"cniVersion":"1.0.0","forceAddress":true,"hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.42.0.0/24"}]],"routes":[{"dst":"10.42.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}`,
	}, {
		name: "k3s dual-stack",
		conf: k3s,
		env:  append(vxlan, "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56", "FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64"),
		want: `{"cniVersion":"1.0.0","forceAddress":true,"hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.42.0.0/24"}],[{"subnet":"2001:cafe:42::/64"}]],"routes":[{"dst":"10.42.0.0/16"},{"dst":"2001:cafe:42::/56"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}`,
	}, {
		name: "IPv6 only, flanneld not masquerading, no cniVersion",
		conf: `{"name":"cbr0","type":"flannel"}`,
		env:  []string{"FLANNEL_IPV6_NETWORK=fd00::/56,fd00::/56", "FLANNEL_IPV6_SUBNET=fd00:0:0:7::1/64", "FLANNEL_MTU=1500", "FLANNEL_IPMASQ=false", "FLANNEL_UNKNOWN=x"},
		want: `{"ipMasq":true,"ipam":{"ranges":[[{"subnet":"fd00:0:0:7::/64"}]],"routes":[{"dst":"fd00::/56"}],"type":"host-local"},"isGateway":true,"mtu":1500,"name":"cbr0","type":"bridge"}`,
	}, {
		name: "delegate keys win; ipam kept, its routes first; runtimeConfig passed on",
		conf: `{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","ipam":{"type":"host-local","dataDir":"/x","routes":[{"dst":"0.0.0.0/0"}]},` +
			`"delegate":{"type":"bridge","bridge":"cni1","ipMasq":true,"mtu":1400,"isGateway":false},"runtimeConfig":{"bandwidth":{"ingressRate":1}}}`,
		env:  vxlan,
		want: `{"bridge":"cni1","cniVersion":"0.3.1","ipMasq":true,"ipam":{"dataDir":"/x","ranges":[[{"subnet":"10.42.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"10.42.0.0/16"}],"type":"host-local"},"isGateway":false,"mtu":1400,"name":"cbr0","runtimeConfig":{"bandwidth":{"ingressRate":1}},"type":"bridge"}`,
	}, {
		name: "another delegate type gets no isGateway",
		conf: `{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","delegate":{"type":"ptp"}}`,
		env:  vxlan,
		want: `{"cniVersion":"1.0.0","ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.42.0.0/24"}]],"routes":[{"dst":"10.42.0.0/16"}],"type":"host-local"},"mtu":1450,"name":"cbr0","type":"ptp"}`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(request(tc.conf))
			if err != nil {
				t.Fatal(err)
			}
			env, err := readSubnetFile(writeEnv(t, tc.env...))
			if err != nil {
				t.Fatal(err)
			}
			got, err := delegateConfig(c, env)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("delegate config\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestSubnetFileErrors: a missing subnet file is "try again later" (11)
// and names the file; an incomplete or broken one names what is wrong.
func TestSubnetFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines []string // nil: no file
		code  uint
		want  string
	}{
		{"missing", nil, cni.ErrTryAgain, "does not exist: flanneld has not leased"},
		{"empty", []string{""}, cni.ErrTryAgain, "lacks FLANNEL_NETWORK or FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"},
		{"no mtu", []string{"FLANNEL_NETWORK=10.42.0.0/16", "FLANNEL_SUBNET=10.42.1.1/24", "FLANNEL_IPMASQ=true"}, cni.ErrTryAgain, "lacks FLANNEL_MTU"},
		{"bad network", []string{"FLANNEL_NETWORK=10.42.0.0/16,banana"}, cni.ErrInvalidConfig, `FLANNEL_NETWORK="10.42.0.0/16,banana"`},
		{"bad mtu", []string{"FLANNEL_MTU=-1"}, cni.ErrInvalidConfig, `FLANNEL_MTU="-1"`},
		{"bad subnet", []string{"FLANNEL_SUBNET"}, cni.ErrInvalidConfig, `FLANNEL_SUBNET=""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "subnet.env")
			if tc.lines != nil {
				f = writeEnv(t, tc.lines...)
			}
			_, err := readSubnetFile(f)
			e, ok := err.(*types.Error)
			if !ok || e.Code != tc.code || !strings.Contains(e.Msg, tc.want) || !strings.Contains(e.Msg, f) {
				t.Fatalf("got %v, want code %d with %q and the file's name", err, tc.code, tc.want)
			}
		})
	}
}

// TestLoadRejects: the reference's rules for the delegate block.
func TestLoadRejects(t *testing.T) {
	for conf, want := range map[string]string{
		`{"name":"n","delegate":{"name":"x"}}`:         "delegate.name: must not be set",
		`{"name":"n","delegate":{"ipam":{}}}`:          "delegate.ipam: must not be set",
		`{"name":"n","delegate":{"type":7}}`:           "delegate.type: must be a non-empty string",
		`{"name":"n","delegate":{"type":""}}`:          "delegate.type: must be a non-empty string",
		`{"name":"n","delegate":[]}`:                   `field "delegate"`,
		`{"name":"n","subnetFile":1}`:                  `field "subnetFile"`,
		`{"name":"n","ipam":{"routes":[{"dst":7}]}}`:   "ipam.routes",
		`{"name":"n","ipam":{"routes":[{"dst":"x"}]}}`: "ipam.routes",
	} {
		_, err := load(request(conf))
		if err == nil && strings.HasPrefix(want, "ipam.") {
			c, _ := load(request(conf))
			env, _ := readSubnetFile(writeEnv(t, "FLANNEL_NETWORK=10.1.0.0/16", "FLANNEL_SUBNET=10.1.2.1/24", "FLANNEL_MTU=1500", "FLANNEL_IPMASQ=true"))
			_, err = delegateConfig(c, env)
		}
		if err == nil || !strings.Contains(err.Error(), want) || err.(*types.Error).Code != cni.ErrInvalidConfig {
			t.Errorf("%s: got %v, want code 7 with %q", conf, err, want)
		}
	}
}
