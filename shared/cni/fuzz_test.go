package cni

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzPrevResult: a prevResult of any shape, in any spec version, is
// either converted to the current result or refused with a CNI decode
// error; never a panic.
// Seeds: f.Add below and testdata/fuzz/FuzzPrevResult.
func FuzzPrevResult(f *testing.F) {
	f.Add("1.0.0", []byte(`{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.0.0.2/24","gateway":"10.0.0.1","interface":0}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.0.0.1"]}}`))
	f.Add("0.4.0", []byte(`{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.2/24","interface":5}]}`))
	f.Add("0.3.1", []byte(`{"ips":[{"version":"6","address":"fd00::2/64","gateway":"fd00::1"}]}`))
	f.Add("0.2.0", []byte(`{"ip4":{"ip":"10.0.0.2/24","gateway":"10.0.0.1","routes":[{"dst":"0.0.0.0/0"}]},"dns":{}}`))
	f.Add("0.1.0", []byte(`{"ip6":{"ip":"fd00::2/64"}}`))
	f.Add("1.1.0", []byte(`{"ips":[{"address":"300.0.0.1/24"}]}`))
	f.Fuzz(func(t *testing.T, version string, prev []byte) {
		var raw map[string]any
		if json.Unmarshal(prev, &raw) != nil {
			return
		}
		conf := &NetConf{CNIVersion: version, RawPrevResult: raw}
		res, err := PrevResult(conf)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code != ErrDecode {
				t.Fatalf("refusal is not a decode error: %#v", err)
			}
			return
		}
		if res == nil {
			t.Fatal("no result and no error")
		}
		_, _ = res.GetAsVersion(version) // back to the config's version: may fail, must not panic
	})
}

// FuzzLoadArgs: CNI_ARGS garbage is refused with code 4 or parsed; never
// a panic.
func FuzzLoadArgs(f *testing.F) {
	f.Add("IgnoreUnknown=1;IP=10.0.0.5;K8S_POD_NAME=p")
	f.Add("a=b=c;;=;\x01")
	f.Add("IP=10.0.0.5,10.0.0.6;MAC=02:00:00:00:00:01")
	f.Add("IgnoreUnknown=true")
	f.Fuzz(func(t *testing.T, args string) {
		var into struct {
			types.CommonArgs
			IP  types.UnmarshallableString
			MAC types.UnmarshallableString
		}
		err := (&Request{Args: args}).LoadArgs(&into)
		var e *types.Error
		if err != nil && (!errors.As(err, &e) || e.Code != ErrInvalidEnv) {
			t.Fatalf("refusal is not code 4: %#v", err)
		}
	})
}

// FuzzValidAttachments: GC's attachment lists of any shape are read or
// refused with a CNI error.
func FuzzValidAttachments(f *testing.F) {
	f.Add([]byte(`{"name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`))
	f.Add([]byte(`{"name":"n","cni.dev/attachments":[{}],"cni.dev/valid-attachments":null}`))
	f.Add([]byte(`{"name":"n","cni.dev/valid-attachments":{"containerID":"a"}}`))
	f.Fuzz(func(t *testing.T, conf []byte) {
		valid, err := (&Request{Config: conf}).ValidAttachments()
		var e *types.Error
		if err != nil && (!errors.As(err, &e) || e.Code == 0 || e.Code == ErrInternal) {
			t.Fatalf("refusal is not a CNI error: %#v", err)
		}
		if err == nil && valid == nil {
			t.Fatal("nil set without an error")
		}
	})
}
