package bridge

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/cni"
)

// FuzzLoad: no configuration or CNI_ARGS makes load panic, and every
// error it returns is a CNI error with a code (7 for bad keys).
func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		`{"cniVersion":"1.0.0","name":"n","type":"bridge"}`,
		`{"cniVersion":"1.0.0","name":"n","type":"bridge","vlan":10,"vlanTrunk":[{"id":5},{"minID":100,"maxID":110}],"preserveDefaultVlan":true}`,
		`{"cniVersion":"1.0.0","name":"n","type":"bridge","vlanTrunk":[{"minID":5}],"mtu":-1}`,
		`{"cniVersion":"1.0.0","name":"n","type":"bridge","runtimeConfig":{"mac":"02:00:00:00:00:01"},"args":{"cni":{"mac":"zz"}}}`,
		`{"cniVersion":"1.0.0","name":"n","type":"bridge","ipMasq":true,"ipMasqBackend":"nftables","isDefaultGateway":true}`,
		`{"vlanTrunk":[null]}`, `[]`, `{`,
	} {
		f.Add(seed, "IgnoreUnknown=1;MAC=02:00:00:00:00:09")
	}
	f.Fuzz(func(t *testing.T, conf, args string) {
		c, err := load(&cni.Request{Config: []byte(conf), Args: args})
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code == 0 {
				t.Fatalf("load(%q) = %v, not a CNI error", conf, err)
			}
			return
		}
		if c.Bridge == "" || len(c.Bridge) > 15 || c.Vlan < 0 || c.Vlan > 4094 {
			t.Fatalf("load(%q) accepted %+v", conf, c)
		}
	})
}
