// Package conformance is cnibox's differential runner: every case of the
// field corpus (testdata/field/<source>/*.json, format in
// testdata/field/README.md) runs once on the reference plugins (v1.9.1)
// and once on cnibox, each in its own throwaway node and pod netns with
// the same inputs, and the two are compared after normalising what must
// differ. The same runner plays mixed chains (cnibox main plugin +
// reference meta plugins and the other way round) and switches (an
// attachment ADDed by one side and CHECKed, GCed and DELeted by the
// other). Every divergence is either declared intentional in
// intentional.go, with its reason, or fails the test.
package conformance

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// Case is one file of the corpus, as testdata/field/README.md describes it.
type Case struct {
	Source   string          `json:"source"`
	About    string          `json:"about"`
	Conflist json.RawMessage `json:"conflist,omitempty"`
	Config   json.RawMessage `json:"config,omitempty"`
	IfName   string          `json:"ifName,omitempty"`
	Args     [][2]string     `json:"args,omitempty"`
	CapArgs  map[string]any  `json:"capabilityArgs,omitempty"`
	// ContainerID, when empty, is a fresh 64-hex ID per case, used by
	// every run of the case: the reference and cnibox see the same ID, so
	// names derived from it (chain names, ifb names, reservations) compare
	// as they are.
	ContainerID string   `json:"containerID,omitempty"`
	Verbs       []string `json:"verbs,omitempty"`
	Node        []string `json:"node,omitempty"`
	Expect      string   `json:"expect,omitempty"`

	// Name is "<source dir>/<file name without .json>", the subtest name.
	Name string `json:"-"`
	// Path is the file the case was read from.
	Path string `json:"-"`
}

// Dir is the corpus root, relative to this package.
const Dir = "../../../testdata/field"

// LoadCases reads every case under root, sorted by name.
func LoadCases(root string) ([]*Case, error) {
	files, err := filepath.Glob(filepath.Join(root, "*", "*.json"))
	if err != nil {
		return nil, err
	}
	var cases []*Case
	for _, f := range files {
		c, err := LoadCase(f)
		if err != nil {
			return nil, err
		}
		c.Name = filepath.Base(filepath.Dir(f)) + "/" + strings.TrimSuffix(filepath.Base(f), ".json")
		cases = append(cases, c)
	}
	sort.Slice(cases, func(i, j int) bool { return cases[i].Name < cases[j].Name })
	return cases, nil
}

// LoadCase reads and checks one case file.
func LoadCase(file string) (*Case, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	c := &Case{Path: file}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, fmt.Errorf("case %s: %w", file, err)
	}
	if (len(c.Conflist) == 0) == (len(c.Config) == 0) {
		return nil, fmt.Errorf("case %s: needs exactly one of conflist and config", file)
	}
	for _, v := range c.verbs() {
		switch strings.TrimSuffix(v, "!") {
		case "ADD", "CHECK", "DEL", "GC", "STATUS":
		default:
			return nil, fmt.Errorf("case %s: unknown verb %q", file, v)
		}
	}
	for _, n := range c.Node {
		f, isKernel := strings.CutPrefix(n, "kernel:")
		_, known := fixtures[n]
		if isKernel {
			known = f == "8021q" || slices.Contains(testnet.KernelFeatures, f)
		}
		if !known {
			return nil, fmt.Errorf("case %s: unknown node fixture %q (known: %s)", file, n, strings.Join(fixtureNames(), ", "))
		}
	}
	if c.Expect != "" && c.Expect != "both-fail" {
		return nil, fmt.Errorf("case %s: unknown expect %q", file, c.Expect)
	}
	return c, nil
}

// ifName is CNI_IFNAME.
func (c *Case) ifName() string {
	if c.IfName == "" {
		return "eth0"
	}
	return c.IfName
}

// netconf is the network configuration: the conflist, or the one config.
func (c *Case) netconf() json.RawMessage {
	if len(c.Conflist) > 0 {
		return c.Conflist
	}
	return c.Config
}

// version is the cniVersion of the case's network configuration.
func (c *Case) version() string {
	var v struct {
		CNIVersion string `json:"cniVersion"`
	}
	json.Unmarshal(c.netconf(), &v)
	return v.CNIVersion
}

// verbs is the sequence the case plays: its own, or ADD, CHECK (from
// 0.4.0 on), DEL, DEL.
func (c *Case) verbs() []string {
	if len(c.Verbs) > 0 {
		return c.Verbs
	}
	if versionAtLeast(c.version(), "0.4.0") {
		return []string{"ADD", "CHECK", "DEL", "DEL"}
	}
	return []string{"ADD", "DEL", "DEL"}
}

// plugins returns the plugin configurations of the case in chain order
// (one for a config case).
func (c *Case) plugins() []map[string]any {
	if len(c.Config) > 0 {
		var m map[string]any
		json.Unmarshal(c.Config, &m)
		return []map[string]any{m}
	}
	var l struct {
		Plugins []map[string]any `json:"plugins"`
	}
	json.Unmarshal(c.Conflist, &l)
	return l.Plugins
}

// types returns the plugin types of the chain, main plugin first.
func (c *Case) types() []string {
	var out []string
	for _, p := range c.plugins() {
		t, _ := p["type"].(string)
		out = append(out, t)
	}
	return out
}

// ipamTypes returns the IPAM plugin types the chain's plugins delegate to.
func (c *Case) ipamTypes() []string {
	var out []string
	for _, p := range c.plugins() {
		if ipam, ok := p["ipam"].(map[string]any); ok {
			if t, _ := ipam["type"].(string); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}

// kernelFeatures are the features the case's node needs ("kernel:X").
func (c *Case) kernelFeatures() []string {
	var out []string
	for _, n := range c.Node {
		if f, ok := strings.CutPrefix(n, "kernel:"); ok {
			out = append(out, f)
		}
	}
	return out
}

func (c *Case) hasNode(fixture string) bool {
	for _, n := range c.Node {
		if n == fixture {
			return true
		}
	}
	return false
}

// versionAtLeast compares dotted spec versions; an empty or unparsable
// version counts as 0.1.0 (what libcni assumes).
func versionAtLeast(v, min string) bool {
	parse := func(s string) [3]int {
		var p [3]int
		fmt.Sscanf(s, "%d.%d.%d", &p[0], &p[1], &p[2])
		if s == "" {
			p = [3]int{0, 1, 0}
		}
		return p
	}
	a, b := parse(v), parse(min)
	for i := range a {
		if a[i] != b[i] {
			return a[i] > b[i]
		}
	}
	return true
}
