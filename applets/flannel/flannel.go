// Package flannel is the flannel meta applet, compatible with
// flannel-io/cni-plugin as flannel's manifests and k3s deploy it. flanneld
// leases the node a subnet of the cluster network and writes it to a
// subnet file; this applet turns that file into the config of a delegate
// plugin (bridge with host-local over the node's subnet, unless the config
// says otherwise), keeps that config on disk for DEL, and runs the
// delegate: in-process when CNI_PATH resolves it to cnibox itself.
//
// The saved config is the reference's file (dataDir/<containerID>, the
// delegate config as JSON), so a node can switch between the reference
// plugin and cnibox with pods running. Beyond the reference: CHECK runs the
// delegate's CHECK, GC and STATUS exist, DEL keeps the saved config when
// the delegate's DEL fails (so a retried DEL can still release the pod's
// address), and ADD without a subnet file says "try again later" (11).
package flannel

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/delegate"
)

// Applet is flannel's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:    "flannel",
	Kind:    "meta",
	Summary: "flannel's pod network: delegate (bridge) over the node's flanneld subnet",
	Add:     Add,
	Del:     Del,
	Check:   Check,
	GC:      GC,
	Status:  Status,
}

// The reference's defaults: where flanneld writes the node's lease, and
// where the delegate configs of running pods are kept.
const (
	DefaultSubnetFile = "/run/flannel/subnet.env"
	DefaultDataDir    = "/var/lib/cni/flannel"
)

// Config is flannel's configuration. Every key is the reference's.
type Config struct {
	cni.NetConf
	// IPAM, when given, is the delegate's IPAM config; flannel sets its
	// ranges from the subnet file and appends the cluster networks to its
	// routes. It shadows NetConf's typed IPAM: any IPAM plugin's keys pass.
	IPAM map[string]any `json:"ipam,omitempty"`
	// SubnetFile is flanneld's subnet file (default DefaultSubnetFile).
	SubnetFile string `json:"subnetFile"`
	// DataDir keeps each pod's delegate config (default DefaultDataDir).
	DataDir string `json:"dataDir"`
	// Delegate is the delegate's config: its keys win over flannel's
	// defaults, except name and ipam, which flannel sets.
	Delegate map[string]any `json:"delegate"`
	// RuntimeConfig (capabilities) is passed on as the delegate's.
	RuntimeConfig map[string]any `json:"runtimeConfig,omitempty"`
}

// decode reads the configuration without judging the delegate block: all
// DEL needs is dataDir.
func decode(req *cni.Request) (*Config, error) {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return nil, err
	}
	if c.SubnetFile == "" {
		c.SubnetFile = DefaultSubnetFile
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	return c, nil
}

// load is decode plus the reference's rules for the delegate block.
func load(req *cni.Request) (*Config, error) {
	c, err := decode(req)
	if err != nil {
		return nil, err
	}
	if t, ok := c.Delegate["type"]; ok {
		if s, isString := t.(string); !isString || s == "" {
			return nil, cni.ConfigError("delegate.type: must be a non-empty string (the delegate plugin's name)")
		}
	}
	for _, k := range []string{"name", "ipam"} {
		if _, ok := c.Delegate[k]; ok {
			return nil, cni.ConfigError("delegate.%s: must not be set: flannel sets it", k)
		}
	}
	return c, nil
}

// Add renders the delegate config from the subnet file, saves it for DEL
// and runs the delegate's ADD; its result is flannel's.
func Add(req *cni.Request) (types.Result, error) {
	c, err := load(req)
	if err != nil {
		return nil, err
	}
	env, err := readSubnetFile(c.SubnetFile)
	if err != nil {
		return nil, err
	}
	conf, err := delegateConfig(c, env)
	if err != nil {
		return nil, err
	}
	// Saved before the delegate runs, as the reference does: a failed ADD
	// is followed by the runtime's DEL, which needs it to undo a half ADD.
	if err := save(c.DataDir, req.ContainerID, conf); err != nil {
		return nil, err
	}
	sub, typ, err := delegateRequest(req, conf)
	if err != nil {
		return nil, err
	}
	res, err := delegate.Add(sub, typ)
	if err != nil {
		return nil, fmt.Errorf("flannel: delegate %s: ADD: %w", typ, err)
	}
	return res, nil
}

// Del runs the delegate's DEL with the config ADD saved; the subnet file
// is not read, so DEL works while flanneld is down, and without a netns.
// No saved config means nothing to undo.
func Del(req *cni.Request) error {
	c, err := decode(req)
	if err != nil {
		return err
	}
	file := filepath.Join(c.DataDir, req.ContainerID)
	conf, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return cni.Errorf(cni.ErrIO, "flannel: read the saved delegate config: %v", err)
	}
	sub, typ, err := delegateRequest(req, conf)
	if err != nil {
		// Nothing can use it; the reference also gives up (with success).
		req.Log.Warnf("flannel: %s is not a delegate config, removing it: %v", file, err)
		return removeSaved(file)
	}
	if err := delegate.Del(sub, typ); err != nil {
		return fmt.Errorf("flannel: delegate %s: DEL (the saved config %s is kept for a retry): %w", typ, file, err)
	}
	return removeSaved(file)
}

// Check runs the delegate's CHECK with the saved config and the
// prevResult the runtime gave flannel (the reference's CHECK does nothing).
func Check(req *cni.Request) error {
	c, err := decode(req)
	if err != nil {
		return err
	}
	file := filepath.Join(c.DataDir, req.ContainerID)
	saved, err := os.ReadFile(file)
	if err != nil {
		return cni.Errorf(cni.ErrUnknownContainer, "flannel: no delegate config saved for container %q: %v", req.ContainerID, err)
	}
	var conf map[string]any
	if err := json.Unmarshal(saved, &conf); err != nil {
		return cni.Errorf(cni.ErrDecode, "flannel: saved delegate config %s: %v", file, err)
	}
	if c.RawPrevResult != nil {
		conf["prevResult"] = c.RawPrevResult
	}
	data, err := json.Marshal(conf)
	if err != nil {
		return err
	}
	sub, typ, err := delegateRequest(req, data)
	if err != nil {
		return err
	}
	if err := delegate.Check(sub, typ); err != nil {
		return fmt.Errorf("flannel: delegate %s: CHECK: %w", typ, err)
	}
	return nil
}

// GC passes GC on to the delegate (which releases the addresses of pods
// the runtime no longer knows), then removes the saved configs of this
// network's pods that are not among the valid attachments. Without a
// subnet file the delegate's config cannot be rendered: the saved configs
// stay until a GC that can release their addresses too.
func GC(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	valid, err := req.ValidAttachments()
	if err != nil {
		return err
	}
	env, err := readSubnetFile(c.SubnetFile)
	if err != nil {
		req.Log.Warnf("flannel: GC: skipped: %v", err)
		return nil
	}
	conf, err := delegateConfig(c, env)
	if err != nil {
		return err
	}
	if err := passOn(req, conf, cni.CmdGC); err != nil {
		return err
	}
	validIDs := map[string]bool{}
	for a := range valid {
		validIDs[a.ContainerID] = true
	}
	ents, err := os.ReadDir(c.DataDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return cni.Errorf(cni.ErrIO, "flannel: GC: list %s: %v", c.DataDir, err)
	}
	var errs []error
	for _, e := range ents {
		if validIDs[e.Name()] || !e.Type().IsRegular() {
			continue
		}
		// Other flannel networks keep theirs in the same directory.
		file := filepath.Join(c.DataDir, e.Name())
		var saved struct {
			Name string `json:"name"`
		}
		if data, err := os.ReadFile(file); err != nil || json.Unmarshal(data, &saved) != nil || saved.Name != req.Name {
			continue
		}
		req.Log.Infof("flannel: GC: removing the saved config of container %s", e.Name())
		errs = append(errs, removeSaved(file))
	}
	return errors.Join(errs...)
}

// Status fails with "not available" (50) while the subnet file is missing
// or incomplete, i.e. flanneld has not leased this node a subnet; then it
// asks the delegate.
func Status(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	env, err := readSubnetFile(c.SubnetFile)
	if err != nil {
		return cni.NotAvailable("%s", err.(*types.Error).Msg)
	}
	conf, err := delegateConfig(c, env)
	if err != nil {
		return err
	}
	return passOn(req, conf, cni.CmdStatus)
}

// passOn runs GC or STATUS of the delegate with conf, plus the request's
// valid attachments for GC.
func passOn(req *cni.Request, conf []byte, cmd string) error {
	if cmd == cni.CmdGC {
		var m, gc map[string]any
		if err := json.Unmarshal(conf, &m); err != nil {
			return err
		}
		if err := json.Unmarshal(req.Config, &gc); err != nil {
			return cni.DecodeError("network configuration", err)
		}
		for _, k := range []string{"cni.dev/valid-attachments", "cni.dev/attachments"} {
			if v, ok := gc[k]; ok {
				m[k] = v
			}
		}
		var err error
		if conf, err = json.Marshal(m); err != nil {
			return err
		}
	}
	sub, typ, err := delegateRequest(req, conf)
	if err != nil {
		return err
	}
	run := map[string]func(*cni.Request, string) error{cni.CmdGC: delegate.GC, cni.CmdStatus: delegate.Status}[cmd]
	if err := run(sub, typ); err != nil {
		return fmt.Errorf("flannel: delegate %s: %s: %w", typ, cmd, err)
	}
	return nil
}

// delegateRequest is req with the delegate's config: what exec'ing the
// delegate with the same environment would give it.
func delegateRequest(req *cni.Request, conf []byte) (*cni.Request, string, error) {
	var head struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Type       string `json:"type"`
	}
	if err := json.Unmarshal(conf, &head); err != nil {
		return nil, "", cni.DecodeError("delegate config", err)
	}
	if head.Type == "" {
		return nil, "", cni.ConfigError("delegate config: missing field \"type\"")
	}
	sub := *req
	sub.Config = conf
	sub.Name = head.Name
	sub.Version = head.CNIVersion
	if sub.Version == "" {
		sub.Version = "0.1.0"
	}
	return &sub, head.Type, nil
}

// subnetEnv is flanneld's lease of this node as its subnet file says.
type subnetEnv struct {
	networks []*net.IPNet // FLANNEL_NETWORK then FLANNEL_IPV6_NETWORK
	subnets  []*net.IPNet // FLANNEL_SUBNET then FLANNEL_IPV6_SUBNET
	mtu      *uint64
	ipMasq   *bool
}

// readSubnetFile reads flanneld's subnet file: KEY=VALUE lines, networks
// comma-separated. Unknown keys are ignored (flanneld writes more).
func readSubnetFile(path string) (*subnetEnv, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, cni.TryAgain("flannel: subnet file %s does not exist: flanneld has not leased this node a subnet (is it running?)", path)
		}
		return nil, cni.Errorf(cni.ErrIO, "flannel: read the subnet file: %v", err)
	}
	defer f.Close()
	var v4nets, v6nets []*net.IPNet
	var v4sub, v6sub *net.IPNet
	env := &subnetEnv{}
	bad := func(key, val string, err error) error {
		return cni.Errorf(cni.ErrInvalidConfig, "flannel: subnet file %s: %s=%q: %v", path, key, val, err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, _ := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		switch key {
		case "FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK":
			var nets []*net.IPNet
			for _, s := range strings.Split(val, ",") {
				_, n, err := net.ParseCIDR(s)
				if err != nil {
					return nil, bad(key, val, err)
				}
				if !containsNet(nets, n) {
					nets = append(nets, n)
				}
			}
			if key == "FLANNEL_NETWORK" {
				v4nets = nets
			} else {
				v6nets = nets
			}
		case "FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET":
			_, n, err := net.ParseCIDR(val)
			if err != nil {
				return nil, bad(key, val, err)
			}
			if key == "FLANNEL_SUBNET" {
				v4sub = n
			} else {
				v6sub = n
			}
		case "FLANNEL_MTU":
			mtu, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				return nil, bad(key, val, err)
			}
			env.mtu = &mtu
		case "FLANNEL_IPMASQ":
			masq := val == "true"
			env.ipMasq = &masq
		}
	}
	if err := sc.Err(); err != nil {
		return nil, cni.Errorf(cni.ErrIO, "flannel: read the subnet file %s: %v", path, err)
	}
	env.networks = append(v4nets, v6nets...)
	for _, n := range []*net.IPNet{v4sub, v6sub} {
		if n != nil {
			env.subnets = append(env.subnets, n)
		}
	}
	var missing []string
	if len(env.networks) == 0 {
		missing = append(missing, "FLANNEL_NETWORK or FLANNEL_IPV6_NETWORK")
	}
	if len(env.subnets) == 0 {
		missing = append(missing, "FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET")
	}
	if env.mtu == nil {
		missing = append(missing, "FLANNEL_MTU")
	}
	if env.ipMasq == nil {
		missing = append(missing, "FLANNEL_IPMASQ")
	}
	if len(missing) > 0 {
		return nil, cni.TryAgain("flannel: subnet file %s lacks %s (flanneld writes them all)", path, strings.Join(missing, ", "))
	}
	return env, nil
}

func containsNet(nets []*net.IPNet, n *net.IPNet) bool {
	for _, m := range nets {
		if m.String() == n.String() {
			return true
		}
	}
	return false
}

// delegateConfig renders the delegate's config as the reference does: the
// delegate block, with name, type (bridge), ipMasq (flannel masquerades
// or the delegate must), mtu, isGateway (bridge), cniVersion, the
// capabilities' runtimeConfig and an IPAM config over the node's subnet
// filled in. A Go map marshals its keys sorted: byte for byte the
// reference's file.
func delegateConfig(c *Config, env *subnetEnv) ([]byte, error) {
	d := make(map[string]any, len(c.Delegate)+8)
	for k, v := range c.Delegate {
		d[k] = v
	}
	if c.RuntimeConfig != nil {
		d["runtimeConfig"] = c.RuntimeConfig
	}
	d["name"] = c.Name
	if _, ok := d["type"]; !ok {
		d["type"] = "bridge"
	}
	if _, ok := d["ipMasq"]; !ok {
		d["ipMasq"] = !*env.ipMasq
	}
	if _, ok := d["mtu"]; !ok {
		d["mtu"] = *env.mtu
	}
	if _, ok := d["isGateway"]; !ok && d["type"] == "bridge" {
		d["isGateway"] = true
	}
	if c.CNIVersion != "" {
		d["cniVersion"] = c.CNIVersion
	}

	ipam := make(map[string]any, len(c.IPAM)+3)
	for k, v := range c.IPAM {
		ipam[k] = v
	}
	if _, ok := ipam["type"]; !ok {
		ipam["type"] = "host-local"
	}
	ranges := [][]map[string]string{}
	for _, n := range env.subnets {
		ranges = append(ranges, []map[string]string{{"subnet": n.String()}})
	}
	ipam["ranges"] = ranges
	routes := []types.Route{}
	if r, ok := c.IPAM["routes"]; ok {
		data, _ := json.Marshal(r)
		if err := json.Unmarshal(data, &routes); err != nil {
			return nil, cni.ConfigError("ipam.routes: %v", err)
		}
	}
	for _, n := range env.networks {
		routes = append(routes, types.Route{Dst: *n})
	}
	ipam["routes"] = routes
	d["ipam"] = ipam

	data, err := json.Marshal(d)
	if err != nil {
		return nil, cni.ConfigError("delegate: %v", err)
	}
	return data, nil
}

// save writes the delegate config where DEL finds it (dataDir/<id>, mode
// 0600 in a 0700 directory, as the reference), through a temporary file
// and a rename so that a crash never leaves half a config.
func save(dir, containerID string, conf []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return cni.Errorf(cni.ErrIO, "flannel: dataDir: %v", err)
	}
	file := filepath.Join(dir, containerID)
	tmp, err := os.CreateTemp(dir, "."+containerID+".tmp-")
	if err != nil {
		return cni.Errorf(cni.ErrIO, "flannel: save the delegate config: %v", err)
	}
	_, err = tmp.Write(conf)
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), file)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return cni.Errorf(cni.ErrIO, "flannel: save the delegate config to %s: %v", file, err)
	}
	return nil
}

func removeSaved(file string) error {
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return cni.Errorf(cni.ErrIO, "flannel: remove the saved delegate config: %v", err)
	}
	return nil
}
