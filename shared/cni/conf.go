package cni

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// NetConf is the part of every plugin configuration the spec defines:
// cniVersion, name, type, capabilities, ipam, dns, prevResult and, for GC,
// the valid attachments. Applets embed it in their own config type.
type NetConf = types.NetConf

// Decode unmarshals the request's configuration into conf, turning JSON
// errors into CNI errors that name the field. conf usually embeds NetConf.
func (r *Request) Decode(conf any) error {
	if err := json.Unmarshal(r.Config, conf); err != nil {
		return DecodeError("network configuration", err)
	}
	return nil
}

// CheckPrevResult is PrevResult for CHECK, which compares the node with
// the result of ADD and so cannot do without it.
func CheckPrevResult(conf *NetConf) (*current.Result, error) {
	prev, err := PrevResult(conf)
	if err == nil && prev == nil {
		err = ConfigError("prevResult: missing: CHECK needs the result of ADD")
	}
	return prev, err
}

// PrevResult converts the configuration's prevResult (in whatever spec
// version the config has) to the current result type. It returns nil, nil
// when there is no prevResult.
func PrevResult(conf *NetConf) (*current.Result, error) {
	if conf.RawPrevResult == nil {
		return nil, nil
	}
	// Results before 1.0.0 need not carry their version, and the
	// reference's tests (and some chaining plugins) send a prevResult
	// without one: it is then the config's version, as libcni's
	// ParsePrevResult decides. A version of its own still wins.
	prev := conf.RawPrevResult
	if !hasVersion(prev) {
		prev = maps.Clone(prev)
		prev["cniVersion"] = conf.CNIVersion
	}
	raw, err := json.Marshal(prev)
	if err != nil {
		return nil, Errorf(types.ErrDecodingFailure, "prevResult: %v", err)
	}
	res, err := version.NewResult(conf.CNIVersion, raw)
	if err != nil {
		return nil, Errorf(types.ErrDecodingFailure, "prevResult: %v", err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, Errorf(types.ErrDecodingFailure, "prevResult: convert to cniVersion %s: %v", current.ImplementedSpecVersion, err)
	}
	return cur, nil
}

// hasVersion reports whether a raw result names a non-empty cniVersion,
// under any case of the key (encoding/json matches keys case-blind).
func hasVersion(raw map[string]any) bool {
	for k, v := range raw {
		if strings.EqualFold(k, "cniVersion") && v != "" && v != nil {
			return true
		}
	}
	return false
}

// Attachment identifies one attachment of a network: a container's interface.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// ValidAttachments returns the attachments a GC request says are still in
// use. It reads the spec's "cni.dev/valid-attachments" and the older
// "cni.dev/attachments" that libcni also sends; when neither key is present
// no attachment is valid (that is what cnitool's gc means).
func (r *Request) ValidAttachments() (map[Attachment]bool, error) {
	var conf struct {
		Valid  []Attachment `json:"cni.dev/valid-attachments"`
		Legacy []Attachment `json:"cni.dev/attachments"`
	}
	if err := json.Unmarshal(r.Config, &conf); err != nil {
		return nil, DecodeError("network configuration", err)
	}
	valid := make(map[Attachment]bool, len(conf.Valid)+len(conf.Legacy))
	for _, a := range append(conf.Valid, conf.Legacy...) {
		valid[a] = true
	}
	return valid, nil
}

// LoadArgs parses CNI_ARGS ("K=V;K2=V2") into a struct of
// types.UnmarshallableString-like fields, as libcni's types.LoadArgs does:
// unknown keys are an error unless IgnoreUnknown=1 is among them.
func (r *Request) LoadArgs(into any) error {
	if r.Args == "" {
		return nil
	}
	if err := types.LoadArgs(r.Args, into); err != nil {
		return Errorf(types.ErrInvalidEnvironmentVariables, "CNI_ARGS: %v", err)
	}
	return nil
}

// CommonArgs is the part of CNI_ARGS every applet understands.
type CommonArgs = types.CommonArgs

// MarshalResultJSON is a small helper for tests and tools: it renders a
// result in the given spec version.
func MarshalResultJSON(res types.Result, cniVersion string) ([]byte, error) {
	conv, err := res.GetAsVersion(cniVersion)
	if err != nil {
		return nil, fmt.Errorf("convert result to %s: %w", cniVersion, err)
	}
	return json.Marshal(conv)
}

// Recorded is what the runtime's record of an attachment, prevResult,
// says of its interfaces. DEL uses it to tie an interface to the
// attachment before deleting it, when no mark of cnibox's does (a pair the
// reference or an older cnibox made).
type Recorded struct {
	// PodMAC is the MAC of the pod's interface, IfName in a sandbox; ""
	// when the record does not say. A chained plugin (tuning's mac) may
	// have changed it, and its DEL changed it back before this one runs.
	PodMAC string
	// Host maps the node-side interfaces (no sandbox) to their MACs: a
	// veth's host end keeps its name and MAC whatever the chain did to
	// the pod's end.
	Host map[string]string
}

// Recorded reads the request's prevResult; the zero Recorded when there
// is none.
func (r *Request) Recorded() Recorded {
	var rec Recorded
	var conf NetConf
	if json.Unmarshal(r.Config, &conf) != nil {
		return rec
	}
	prev, err := PrevResult(&conf)
	if err != nil || prev == nil {
		return rec
	}
	for _, i := range prev.Interfaces {
		switch {
		case i == nil:
		case i.Sandbox == "":
			if rec.Host == nil {
				rec.Host = make(map[string]string)
			}
			rec.Host[i.Name] = i.Mac
		case i.Name == r.IfName:
			rec.PodMAC = i.Mac
		}
	}
	return rec
}

// OtherNetns reports that CNI_NETNS is not the network namespace the
// runtime's record of this attachment (the sandbox of prevResult's
// interfaces) names: both exist and are different namespaces. DEL then
// changes nothing in CNI_NETNS, which is another pod's (a runtime that
// passed the wrong netns). Without a prevResult, or when its sandbox is
// gone, it cannot tell and reports false.
func (r *Request) OtherNetns() bool {
	if r.Netns == "" {
		return false
	}
	var conf NetConf
	if json.Unmarshal(r.Config, &conf) != nil {
		return false
	}
	prev, err := PrevResult(&conf)
	if err != nil || prev == nil {
		return false
	}
	here, err := os.Stat(r.Netns)
	if err != nil {
		return false
	}
	other := false
	for _, i := range prev.Interfaces {
		if i == nil || i.Sandbox == "" {
			continue
		}
		st, err := os.Stat(i.Sandbox)
		if err != nil {
			continue
		}
		if os.SameFile(st, here) {
			return false
		}
		other = true
	}
	return other
}
