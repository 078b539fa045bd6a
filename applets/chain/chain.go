// Package chain is the one-exec chain: a network whose single plugin is
//
//	{"type": "cnibox", "capabilities": {...}, "plugins": [ ...the usual list... ]}
//
// runs the whole inner list in one process, doing between the inner
// plugins exactly what libcni does between the plugins of a conflist. A
// runtime execs one plugin instead of one per plugin, so the chain pays
// one process start instead of N (the part of the floor that binds the
// reference too), and one process owns the whole teardown.
//
// Why this shape: the runtime must still speak plain CNI to us (no runtime
// knows anything of cnibox), and the only thing a runtime execs is a
// plugin "type" in CNI_PATH. The binary's own name is always there
// (cnibox install puts it next to its links), never clashes with a
// reference plugin name, and the inner list is verbatim the conflist's
// "plugins", so switching a network to one exec is moving its list one
// level down, and back. The alternative, a conflist-level key, would need
// every runtime to learn it.
//
// What libcni does, and so this does, per inner plugin:
//   - its config gets the network's "name" and "cniVersion";
//   - "runtimeConfig" holds the capability arguments it declares (from the
//     outer runtimeConfig, which libcni fills by the outer plugin's
//     capabilities; the outer must therefore declare their union, which
//     ADD checks, so that a missing one is an error, not a silent no-op);
//   - ADD: in order, each one's result (converted to the network's
//     cniVersion, as the plugin would have printed it) is the next one's
//     prevResult; the last result is the chain's, which the runtime caches;
//   - CHECK and DEL: each gets the cached result the runtime passes the
//     chain as prevResult; DEL runs in reverse order (but see Del: the
//     DELs that touch no link go first when the links go in one request);
//     the first error ends ADD, CHECK, DEL and STATUS, as in libcni;
//   - GC: each gets "cni.dev/valid-attachments"; every one runs, the
//     errors are joined, as in libcni.
//
// An inner plugin that CNI_PATH resolves to this binary (by a symlink, a
// hard link or the applet entry "cnibox install" writes) runs in-process
// (unless CNIBOX_NO_INPROCESS is set, as for delegated IPAM); any other
// (a third-party plugin in the list) is exec'd from CNI_PATH as libcni
// would.
package chain

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/applets/bandwidth"
	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/delegate"
	"github.com/cnibox/cnibox/shared/logging"
	"github.com/cnibox/cnibox/shared/veth"
)

// Name is the plugin type of the one-exec chain: the binary's own name.
const Name = "cnibox"

// Applet is the one-exec chain. main runs it when the binary is invoked
// under its own name with CNI_COMMAND set.
var Applet = &cni.Applet{
	Name:    Name,
	Kind:    "meta",
	Summary: "a whole plugin list in one process (\"plugins\": [...])",
	Add:     Add,
	Del:     Del,
	Check:   Check,
	GC:      GC,
	Status:  Status,
}

// conf is the outer plugin's configuration.
type conf struct {
	cni.NetConf
	Plugins       []json.RawMessage `json:"plugins"`
	RuntimeConfig map[string]any    `json:"runtimeConfig"`
	RawPrev       json.RawMessage   `json:"prevResult"`
	Valid         json.RawMessage   `json:"cni.dev/valid-attachments"`
	LegacyValid   json.RawMessage   `json:"cni.dev/attachments"`
}

// inner is one plugin of the list.
type inner struct {
	typ    string
	caps   map[string]bool
	fields map[string]json.RawMessage
}

func load(req *cni.Request) (*conf, []inner, error) {
	var c conf
	if err := req.Decode(&c); err != nil {
		return nil, nil, err
	}
	if len(c.Plugins) == 0 {
		return nil, nil, cni.ConfigError("%s: field \"plugins\": the list of plugins to run is missing or empty", Name)
	}
	list := make([]inner, len(c.Plugins))
	for i, raw := range c.Plugins {
		var in inner
		if err := json.Unmarshal(raw, &in.fields); err != nil || in.fields == nil {
			return nil, nil, cni.ConfigError("%s: plugins[%d]: not a JSON object", Name, i)
		}
		if err := json.Unmarshal(in.fields["type"], &in.typ); err != nil || in.typ == "" {
			return nil, nil, cni.ConfigError("%s: plugins[%d]: missing field \"type\"", Name, i)
		}
		if in.typ == Name {
			return nil, nil, cni.ConfigError("%s: plugins[%d]: a %s chain cannot hold another", Name, i, Name)
		}
		if raw, ok := in.fields["capabilities"]; ok {
			if err := json.Unmarshal(raw, &in.caps); err != nil {
				return nil, nil, cni.ConfigError("%s: plugins[%d] (%s): field \"capabilities\": %v", Name, i, in.typ, err)
			}
		}
		for cap, on := range in.caps {
			if on && !c.Capabilities[cap] {
				return nil, nil, cni.ConfigError("%s: plugins[%d] (%s) declares capability %q, which the outer plugin's \"capabilities\" lacks: the runtime would never pass it", Name, i, in.typ, cap)
			}
		}
		list[i] = in
	}
	return &c, list, nil
}

// config builds the inner plugin's configuration as libcni's
// buildOneConfig does: name, cniVersion, the runtimeConfig of its
// capabilities, and prevResult.
func (in inner) config(c *conf, prev json.RawMessage, extra map[string]json.RawMessage) ([]byte, error) {
	fields := make(map[string]json.RawMessage, len(in.fields)+4)
	for k, v := range in.fields {
		fields[k] = v
	}
	set := func(k string, v any) error {
		b, err := json.Marshal(v)
		fields[k] = b
		return err
	}
	if err := set("name", c.Name); err != nil {
		return nil, err
	}
	if err := set("cniVersion", c.CNIVersion); err != nil {
		return nil, err
	}
	rc := map[string]any{}
	for cap, on := range in.caps {
		if v, ok := c.RuntimeConfig[cap]; ok && on {
			rc[cap] = v
		}
	}
	if len(rc) > 0 {
		if err := set("runtimeConfig", rc); err != nil {
			return nil, err
		}
	}
	if prev != nil {
		fields["prevResult"] = prev
	}
	for k, v := range extra {
		fields[k] = v
	}
	return json.Marshal(fields)
}

// run runs cmd of one inner plugin with config and returns its result
// (ADD) as the plugin would have printed it, at the network's version.
func run(req *cni.Request, cmd string, in inner, config []byte) (types.Result, error) {
	a, path, err := resolve(req, in.typ)
	if err != nil {
		return nil, err
	}
	if a == nil && cmd == delRules {
		return nil, nil
	}
	if a == nil {
		args := &invoke.Args{Command: cmd, ContainerID: req.ContainerID, NetNS: req.Netns,
			PluginArgsStr: req.Args, IfName: req.IfName, Path: req.Path}
		if cmd == cni.CmdAdd {
			return invoke.ExecPluginWithResult(context.Background(), path, config, args, nil)
		}
		return nil, invoke.ExecPluginWithoutResult(context.Background(), path, config, args, nil)
	}
	sub := *req
	sub.Command = cmd
	if cmd == delRules {
		sub.Command = cni.CmdDel
	}
	sub.Config = config
	sub.Log = logging.New(a.Name, os.Stderr)
	sub.Log.Configure(config, req.ContainerID)
	defer sub.Log.Close()
	// As an exec'd cnibox applet does (cni.Run): at debug level each
	// inner plugin says how long it took, which is where a chain's time
	// goes.
	start := time.Now()
	defer func() { sub.Log.Debugf("%s took %v", cmd, time.Since(start).Round(time.Microsecond)) }()
	if err := cni.CheckVersion(a, &sub); err != nil {
		return nil, err
	}
	switch cmd {
	case cni.CmdAdd:
		if a.Add == nil {
			return nil, cni.Errorf(types.ErrInternal, "%s does not implement ADD", a.Name)
		}
		res, err := a.Add(&sub)
		if err != nil {
			return nil, err
		}
		if res == nil {
			return nil, cni.Errorf(types.ErrInternal, "%s returned no result", a.Name)
		}
		return res.GetAsVersion(sub.Version)
	case cni.CmdDel:
		return nil, call(a.Del, &sub)
	case delRules:
		return nil, call(a.DelRules, &sub)
	case cni.CmdCheck:
		return nil, call(a.Check, &sub)
	case cni.CmdGC:
		return nil, call(a.GC, &sub)
	case cni.CmdStatus:
		return nil, call(a.Status, &sub)
	}
	return nil, nil
}

func call(f func(*cni.Request) error, req *cni.Request) error {
	if f == nil {
		return nil
	}
	return f(req)
}

// resolve finds plugin in CNI_PATH as libcni does and returns the applet
// when the file found is this binary (run in-process), or the path to
// exec. Without CNI_PATH an applet of ours still runs.
func resolve(req *cni.Request, plugin string) (*cni.Applet, string, error) {
	if strings.ContainsAny(plugin, `/\`) || plugin == "." || plugin == ".." {
		return nil, "", cni.ConfigError("%s: plugin type %q must not contain a path separator", Name, plugin)
	}
	own := cni.Lookup(plugin)
	if req.Path == "" {
		if own == nil {
			return nil, "", cni.Errorf(cni.ErrInvalidEnv, "CNI_PATH is empty: cannot find plugin %q", plugin)
		}
		return own, "", nil
	}
	path, err := invoke.FindInPath(plugin, filepath.SplitList(req.Path))
	if err != nil {
		return nil, "", cni.Errorf(cni.ErrInvalidConfig, "find plugin %q in CNI_PATH %q: %v", plugin, req.Path, err)
	}
	// What "cnibox install" puts there by default is an applet entry (a
	// "#!cnibox" script), not this binary's inode: SelfApplet sees
	// through it as through a symlink or hard link. Compared by the file
	// alone, every inner plugin of an installed chain was exec'd, and the
	// one exec cost as much as the ordinary chain.
	if own != nil && delegate.SelfApplet(path) == own {
		return own, path, nil
	}
	return nil, path, nil
}

// failed says which inner plugin failed, keeping its error code.
func failed(in inner, cmd string, err error) error {
	return fmt.Errorf("plugin type=%q failed (%s): %w", in.typ, strings.ToLower(cmd), err)
}

// Add runs every inner ADD in order, each with the previous result.
func Add(req *cni.Request) (types.Result, error) {
	c, list, err := load(req)
	if err != nil {
		return nil, err
	}
	prev := json.RawMessage(c.RawPrev)
	if len(prev) == 0 || string(prev) == "null" {
		prev = nil
	}
	var res types.Result
	for _, in := range list {
		config, err := in.config(c, prev, nil)
		if err != nil {
			return nil, failed(in, req.Command, err)
		}
		if res, err = run(req, cni.CmdAdd, in, config); err != nil {
			return nil, failed(in, req.Command, err)
		}
		if prev, err = json.Marshal(res); err != nil {
			return nil, failed(in, req.Command, err)
		}
	}
	if _, err := current.NewResultFromResult(res); err != nil {
		return nil, cni.Errorf(types.ErrDecodingFailure, "%s: the last plugin's result: %v", Name, err)
	}
	return res, nil
}

// eachWithCached runs cmd of the inner plugins in the given order, each
// with the cached result as prevResult, until the first error.
func eachWithCached(req *cni.Request, reverse bool) error {
	c, list, err := load(req)
	if err != nil {
		return err
	}
	return eachPicked(req, c, list, reverse, req.Command, func(inner) bool { return true })
}

// eachPicked runs cmd of the inner plugins pick picks, as eachWithCached.
func eachPicked(req *cni.Request, c *conf, list []inner, reverse bool, cmd string, pick func(inner) bool) error {
	var prev json.RawMessage
	if len(c.RawPrev) > 0 && string(c.RawPrev) != "null" {
		prev = c.RawPrev
	}
	if reverse {
		list = slices.Clone(list)
		slices.Reverse(list)
	}
	for _, in := range list {
		if !pick(in) {
			continue
		}
		config, err := in.config(c, prev, nil)
		if err == nil {
			_, err = run(req, cmd, in, config)
		}
		if err != nil {
			return failed(in, req.Command, err)
		}
	}
	return nil
}

// Del runs every inner DEL in reverse order. When the list holds
// cnibox's bandwidth and bridge or ptp, run here, it first deletes the
// attachment's veth and IFB in one request (deleteTogether); the inner
// DELs then find them gone, which every DEL accepts, and do the rest.
// That deletion waits for an RCU grace period, and so does the kernel's
// freeing of the rules the firewall DELs delete: those DELs (cnibox's
// portmap and firewall, which touch no link) and the rules part of the
// main plugin's DEL (its ipMasq: cni.Applet.DelRules) run first, during
// the links' deletion, so that the waits overlap (the netfilter sockets of
// all of them close when the verb is done: see nft.HoldSockets).
func Del(req *cni.Request) error {
	c, list, err := load(req)
	if err != nil {
		return err
	}
	if !inProcess(req, list, "bandwidth") || !inProcess(req, list, "bridge") && !inProcess(req, list, "ptp") {
		return eachPicked(req, c, list, true, cni.CmdDel, func(inner) bool { return true })
	}
	deleted := make(chan error, 1)
	go func() { deleted <- deleteTogether(req) }()
	free := map[string]bool{"portmap": inProcess(req, list, "portmap"), "firewall": inProcess(req, list, "firewall")}
	linkFree := func(in inner) bool { return free[in.typ] }
	err = eachPicked(req, c, list, true, cni.CmdDel, linkFree)
	if err == nil {
		// The main plugin's own rules (ipMasq) go now too; its DEL
		// below finds them gone.
		err = eachPicked(req, c, list, true, delRules, func(in inner) bool { return !linkFree(in) })
	}
	if e := <-deleted; e != nil {
		// The inner DELs delete them one at a time.
		req.Log.Infof("delete the veth and the IFB in one request: %v", e)
	}
	if err != nil {
		return err
	}
	return eachPicked(req, c, list, true, cni.CmdDel, func(in inner) bool { return !linkFree(in) })
}

// delRules is run's command for an inner applet's DelRules (see
// cni.Applet): the part of its DEL that touches no link. A plugin that
// has none, or runs in a process of its own, does all of it in its DEL.
const delRules = "DEL (rules only)"

// inProcess reports whether the list holds plugin and it runs here.
func inProcess(req *cni.Request, list []inner, plugin string) bool {
	for _, in := range list {
		if in.typ == plugin {
			a, _, err := resolve(req, plugin)
			return err == nil && a != nil
		}
	}
	return false
}

// attachmentGroup is the link group deleteTogether uses for an attachment.
func attachmentGroup(req *cni.Request) uint32 {
	sum := sha256.Sum256([]byte(req.Name + "/" + req.ContainerID + "/" + req.IfName))
	return binary.BigEndian.Uint32(sum[:4])&(1<<30-1) | 1<<30
}

// deleteTogether deletes the attachment's host veth (its peer goes with
// it) and its IFB in one RTM_DELLINK: the kernel unregisters both in one
// batch, one RCU grace period instead of one per link, and a link
// deletion's grace period is most of a DEL. The kernel deletes several
// links at once only by group, so both get a group of their own (a hash
// of the attachment in [2^30, 2^31): far from the small numbers people
// use, and within what ip(8) accepts), and the request goes only when a
// listing shows no other link in it. Each link must be cnibox's for this
// attachment (its alias says so); otherwise nothing is done here.
func deleteTogether(req *cni.Request) error {
	host, err := netlinksafe.LinkByName(veth.HostName(req.ContainerID, req.IfName))
	if err != nil {
		return err
	}
	nw, cid, ifName, ok := veth.ParseAlias(host.Attrs().Alias)
	if host.Type() != "veth" || !ok || nw != req.Name || cid != req.ContainerID || ifName != req.IfName {
		return fmt.Errorf("%s is not this attachment's veth", host.Attrs().Name)
	}
	name, alias := bandwidth.IFB(req.Name, req.ContainerID)
	ifb, err := netlinksafe.LinkByName(name)
	if err != nil {
		return err
	}
	if ifb.Type() != "ifb" || ifb.Attrs().Alias != alias {
		return fmt.Errorf("%s is not this attachment's IFB", name)
	}
	group := attachmentGroup(req)
	for _, l := range []netlink.Link{host, ifb} {
		if err := netlink.LinkSetGroup(l, int(group)); err != nil {
			return fmt.Errorf("set group of %s: %w", l.Attrs().Name, err)
		}
	}
	links, err := netlinksafe.LinkList()
	if err != nil {
		return err
	}
	for _, l := range links {
		if a := l.Attrs(); a.Group == group && a.Index != host.Attrs().Index && a.Index != ifb.Attrs().Index {
			return fmt.Errorf("link %s is in group %d too", a.Name, group)
		}
	}
	req2 := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req2.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req2.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(group)))
	if _, err := req2.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("delete group %d: %w", group, err)
	}
	return nil
}

// Check runs every inner CHECK in order.
func Check(req *cni.Request) error { return eachWithCached(req, false) }

// Status runs every inner STATUS in order.
func Status(req *cni.Request) error { return eachWithCached(req, false) }

// GC runs every inner GC with the valid attachments; all of them run.
func GC(req *cni.Request) error {
	c, list, err := load(req)
	if err != nil {
		return err
	}
	extra := map[string]json.RawMessage{}
	if len(c.Valid) > 0 {
		extra["cni.dev/valid-attachments"] = c.Valid
	}
	if len(c.LegacyValid) > 0 {
		extra["cni.dev/attachments"] = c.LegacyValid
	}
	var errs []error
	for _, in := range list {
		config, err := in.config(c, nil, extra)
		if err == nil {
			_, err = run(req, cni.CmdGC, in, config)
		}
		if err != nil {
			errs = append(errs, failed(in, req.Command, err))
		}
	}
	return errors.Join(errs...)
}
