package flannel

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/cni"
)

// FuzzConfig: any flannel config and subnet file are refused with a CNI
// error other than 999, or rendered into a delegate config that is JSON
// with flannel's name, a type and host-local-style ranges; never a panic.
func FuzzConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}`),
		"FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
	f.Add([]byte(`{"name":"cbr0","ipam":{"routes":[{"dst":"0.0.0.0/0","gw":"10.0.0.1"}]},"delegate":{"type":"ptp","mtu":"x"}}`),
		"FLANNEL_IPV6_NETWORK=fd00::/56,fd01::/56\nFLANNEL_IPV6_SUBNET=fd00::1/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false")
	f.Add([]byte(`{"name":"cbr0","delegate":{"name":"x"}}`), "FLANNEL_MTU=99999999999\n=\n\x00")
	f.Fuzz(func(t *testing.T, conf []byte, env string) {
		isCNI := func(err error) {
			var e *types.Error
			if !errors.As(err, &e) || e.Code == 0 || e.Code == cni.ErrInternal {
				t.Fatalf("refusal is not a CNI error: %#v", err)
			}
		}
		c, err := load(&cni.Request{Config: conf, Name: "cbr0", Version: "1.0.0"})
		if err != nil {
			isCNI(err)
			return
		}
		file := filepath.Join(t.TempDir(), "subnet.env")
		if err := os.WriteFile(file, []byte(env), 0o644); err != nil {
			t.Fatal(err)
		}
		se, err := readSubnetFile(file)
		if err != nil {
			isCNI(err)
			return
		}
		out, err := delegateConfig(c, se)
		if err != nil {
			isCNI(err)
			return
		}
		var d struct {
			Name string `json:"name"`
			Type string `json:"type"`
			IPAM struct {
				Ranges [][]struct {
					Subnet string `json:"subnet"`
				} `json:"ranges"`
			} `json:"ipam"`
		}
		if err := json.Unmarshal(out, &d); err != nil || d.Name != c.Name || d.Type == "" || len(d.IPAM.Ranges) == 0 {
			t.Fatalf("delegate config %s: %v", out, err)
		}
	})
}
