// Package bandwidth is the bandwidth applet: chained after a veth-based
// plugin (bridge, ptp), it limits traffic into the pod with a TBF on the
// host end of the veth, and traffic out of the pod by redirecting what
// arrives on the host end to an IFB with a TBF of its own, exactly as the
// reference plugin does. Beyond the reference it has GC (IFBs of
// attachments that are gone, which the reference leaks when DEL never
// comes) and a configurable queue latency instead of a fixed 25 ms.
package bandwidth

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/logging"
	"github.com/cnibox/cnibox/shared/veth"
)

// Applet is bandwidth's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:     "bandwidth",
	Kind:     "meta",
	Summary:  "limit a veth pod's ingress and egress rate (tbf, ifb)",
	Versions: cni.VersionsFrom("0.3.0"),
	Add:      Add,
	Del:      Del,
	Check:    Check,
	GC:       GC,
}

// Limits are the rates of the CNI "bandwidth" capability: rates in bits
// per second and bursts in bits, 0 meaning unlimited. A rate needs its
// burst and a burst its rate.
type Limits struct {
	IngressRate  uint64 `json:"ingressRate"`  // into the pod
	IngressBurst uint64 `json:"ingressBurst"` // bits
	EgressRate   uint64 `json:"egressRate"`   // out of the pod
	EgressBurst  uint64 `json:"egressBurst"`  // bits
}

// DefaultLatencyMs is the queue latency the reference fixes.
const DefaultLatencyMs = 25

// Config is bandwidth's configuration.
type Config struct {
	cni.NetConf
	// The static limits (see Limits). When any of the four keys is
	// present they win over runtimeConfig.bandwidth, as in the reference.
	IngressRate  *uint64 `json:"ingressRate,omitempty"`
	IngressBurst *uint64 `json:"ingressBurst,omitempty"`
	EgressRate   *uint64 `json:"egressRate,omitempty"`
	EgressBurst  *uint64 `json:"egressBurst,omitempty"`
	// LatencyMs is how long a packet may wait in either TBF queue: the
	// queue holds rate × latency + burst bytes. Lower means less
	// bufferbloat, higher fewer drops of bursty senders (UDP). Default 25,
	// the reference's fixed value; 0 < latencyMs ≤ 10000.
	LatencyMs *float64 `json:"latencyMs,omitempty"`

	RuntimeConfig struct {
		Bandwidth *Limits `json:"bandwidth,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// plan is what one attachment gets: either direction may be nil.
type plan struct {
	ingress, egress *tbf
}

// Add shapes the pod's veth and passes the previous result on, with the
// IFB added when there is egress shaping. A failure undoes what it did.
func Add(req *cni.Request) (types.Result, error) {
	conf, p, err := load(req)
	if err != nil {
		return nil, err
	}
	prev, err := cni.PrevResult(&conf.NetConf)
	if err != nil {
		return nil, err
	}
	if prev == nil {
		return nil, cni.ConfigError("prevResult: missing: bandwidth must be chained after the plugin that creates %s (bridge or ptp)", req.IfName)
	}
	if p.ingress == nil && p.egress == nil {
		return prev, nil
	}
	host, err := hostVeth(req)
	if err != nil {
		return nil, err
	}
	if other := otherAttachment(req, host); other != "" {
		return nil, fmt.Errorf("bandwidth: %s", other)
	}
	rb := &rollback{host: host}
	ifb, err := shape(req, host, p, rb)
	if err != nil {
		rb.undo(req)
		return nil, fmt.Errorf("bandwidth: %w", err)
	}
	if ifb != nil {
		prev.Interfaces = append(prev.Interfaces, &current.Interface{Name: ifb.Attrs().Name, Mac: ifb.Attrs().HardwareAddr.String()})
	}
	if req.Log.Enabled(logging.LevelInfo) {
		rate := func(t *tbf) string {
			if t == nil {
				return "unlimited"
			}
			return strconv.FormatUint(t.Rate*8, 10) + " bit/s"
		}
		req.Log.Note("bandwidth on %s: into the pod %s, out of it %s", host.Attrs().Name, rate(p.ingress), rate(p.egress))
	}
	return prev, nil
}

// rollback is what one ADD changed, so that its failure takes back exactly
// that. A retried ADD finds the first attempt's IFB and qdiscs in place;
// if it fails, the pod keeps the shaping it had (the first attempt may
// have answered success to a runtime that lost the answer).
type rollback struct {
	host        netlink.Link
	hostTBF     bool         // ADD set the host veth's root tbf ...
	prevHostTBF *netlink.Tbf // ... replacing this one (nil: there was none)
	ifb         netlink.Link
	ifbCreated  bool // ADD created the IFB
	ifbTBF      bool
	prevIFBTBF  *netlink.Tbf
	ingress     bool // ADD made the host veth's ingress qdisc (and redirect)
}

func (rb *rollback) undo(req *cni.Request) {
	name := rb.host.Attrs().Name
	if rb.ingress {
		if err := ignoreGone(netlink.QdiscDel(ingressQdisc(rb.host.Attrs().Index))); err != nil {
			req.Log.Warnf("undo: delete ingress qdisc of %s: %v", name, err)
		}
	}
	switch {
	case rb.ifbCreated:
		if err := deleteIFB(ifbName(req.Name, req.ContainerID)); err != nil {
			req.Log.Warnf("undo: delete ifb: %v", err)
		}
	case rb.ifbTBF:
		if err := restoreTBF(rb.ifb, rb.prevIFBTBF); err != nil {
			req.Log.Warnf("undo: restore tbf of %s: %v", rb.ifb.Attrs().Name, err)
		}
	}
	if rb.hostTBF {
		if err := restoreTBF(rb.host, rb.prevHostTBF); err != nil {
			req.Log.Warnf("undo: restore tbf of %s: %v", name, err)
		}
	}
}

// restoreTBF puts back the root tbf a link had, or removes ours if it had
// none.
func restoreTBF(link netlink.Link, prev *netlink.Tbf) error {
	if prev == nil {
		return delRootTBF(link)
	}
	return netlink.QdiscReplace(prev)
}

func shape(req *cni.Request, host netlink.Link, p *plan, rb *rollback) (netlink.Link, error) {
	name := host.Attrs().Name
	if p.ingress != nil {
		warn(req, "ingress", p.ingress, host.Attrs().MTU)
		prev, err := rootTBF(host)
		if err != nil {
			return nil, fmt.Errorf("ingress: list qdiscs of %s: %w", name, err)
		}
		if err := setRootTBF(host.Attrs().Index, p.ingress); err != nil {
			return nil, fmt.Errorf("ingress: set tbf on %s: %w", name, err)
		}
		rb.hostTBF, rb.prevHostTBF = true, prev
	}
	if p.egress == nil {
		return nil, nil
	}
	warn(req, "egress", p.egress, host.Attrs().MTU)
	ifb, created, err := ensureIFB(ifbName(req.Name, req.ContainerID), ifbAlias(req.Name, req.ContainerID), host.Attrs().MTU)
	rb.ifbCreated = created
	if err != nil {
		return nil, fmt.Errorf("egress: %w", err)
	}
	rb.ifb = ifb
	prev, err := rootTBF(ifb)
	if err != nil {
		return nil, fmt.Errorf("egress: list qdiscs of %s: %w", ifb.Attrs().Name, err)
	}
	if err := setRootTBF(ifb.Attrs().Index, p.egress); err != nil {
		return nil, fmt.Errorf("egress: set tbf on %s: %w", ifb.Attrs().Name, err)
	}
	rb.ifbTBF, rb.prevIFBTBF = true, prev
	if err := redirect(host, ifb, rb); err != nil {
		return nil, fmt.Errorf("egress: %w", err)
	}
	return ifb, nil
}

// warn logs what the kernel could not express (see newTBF) and a burst
// below the MTU: a TBF drops every packet larger than its burst that the
// kernel cannot segment, so that is almost always a mistake; the reference
// accepts it, so we only say so.
func warn(req *cni.Request, dir string, t *tbf, mtu int) {
	for _, w := range t.Warnings {
		req.Log.Warnf("%s", w)
	}
	if mtu > 0 && t.Burst < uint32(mtu) {
		req.Log.Warnf("%sBurst of %d bytes is below the MTU (%d): full-size packets will be dropped", dir, t.Burst, mtu)
	}
}

// otherAttachment says why the host veth's shaping belongs to another
// attachment, or "" when it is this one's or nobody's: ADD must not take
// it over (the reference refuses too: its qdiscs exist) and DEL must not
// remove it. cnibox's bridge and ptp name the attachment in the host
// veth's alias; for other veths, a live redirect to an IFB that is not
// this attachment's tells.
func otherAttachment(req *cni.Request, host netlink.Link) string {
	a := host.Attrs()
	if _, cid, ifName, ok := veth.ParseAlias(a.Alias); ok && a.Alias != veth.Alias(req.Name, req.ContainerID, req.IfName) {
		return fmt.Sprintf("%s, the host end of %s, belongs to container %s (%s), not %s (%s): leaving its shaping alone", a.Name, req.IfName, cid, ifName, req.ContainerID, req.IfName)
	}
	if target := redirectTarget(host); target != nil && target.Attrs().Name != ifbName(req.Name, req.ContainerID) {
		return fmt.Sprintf("%s already redirects to %s, another attachment's ifb: leaving its shaping alone", a.Name, target.Attrs().Name)
	}
	return ""
}

// teardown removes the attachment's IFB and, unless they belong to
// another attachment, the host veth's qdiscs.
func teardown(req *cni.Request, host netlink.Link) {
	if err := deleteIFB(ifbName(req.Name, req.ContainerID)); err != nil {
		req.Log.Warnf("delete ifb: %v", err)
	}
	if host == nil {
		return
	}
	if other := otherAttachment(req, host); other != "" {
		req.Log.Infof("%s", other)
		return
	}
	if err := delRootTBF(host); err != nil {
		req.Log.Warnf("delete tbf of %s: %v", host.Attrs().Name, err)
	}
	if err := ignoreGone(netlink.QdiscDel(ingressQdisc(host.Attrs().Index))); err != nil {
		req.Log.Warnf("delete ingress qdisc of %s: %v", host.Attrs().Name, err)
	}
}

// Del deletes the attachment's IFB and, while the pod's veth still exists,
// its qdiscs. Nothing to delete is success.
func Del(req *cni.Request) error {
	conf := &Config{}
	if err := req.Decode(conf); err != nil {
		return err
	}
	var host netlink.Link
	if req.Netns != "" {
		var err error
		if host, err = hostVeth(req); err != nil {
			host = nil // netns, pod interface or veth gone: so are the qdiscs
		}
	}
	teardown(req, host)
	return nil
}

// Check verifies both directions' qdiscs and the redirect to the IFB.
func Check(req *cni.Request) error {
	conf, p, err := load(req)
	if err != nil {
		return err
	}
	prev, err := cni.PrevResult(&conf.NetConf)
	if err != nil {
		return err
	}
	if prev == nil {
		return cni.ConfigError("prevResult: missing: bandwidth must be chained after the plugin that creates %s (bridge or ptp)", req.IfName)
	}
	if p.ingress == nil && p.egress == nil {
		return nil // ADD passed the result through, whatever the interface
	}
	host, err := hostVeth(req)
	if err != nil {
		return err
	}
	if p.ingress != nil {
		if err := checkTBF(host, p.ingress, "ingress"); err != nil {
			return err
		}
	}
	if p.egress != nil {
		name := ifbName(req.Name, req.ContainerID)
		ifb, err := netlinksafe.LinkByName(name)
		if err != nil {
			return fmt.Errorf("egress: ifb %s: %w", name, err)
		}
		if err := checkTBF(ifb, p.egress, "egress"); err != nil {
			return err
		}
		if err := checkRedirect(host, ifb); err != nil {
			return err
		}
	}
	return nil
}

// GC deletes this network's IFBs whose attachment is not valid. It knows
// its IFBs by their alias (see aliasPrefix); IFBs made by the reference
// plugin have none and are left alone, since their network is unknowable.
func GC(req *cni.Request) error {
	valid, err := req.ValidAttachments()
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for a := range valid {
		keep[ifbName(req.Name, a.ContainerID)] = true
	}
	links, err := netlinksafe.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "ifb" || keep[a.Name] || !ifbOfNetwork(a.Alias, req.Name) {
			continue
		}
		if err := ignoreGone(netlink.LinkDel(l)); err != nil {
			errs = append(errs, fmt.Errorf("delete stale ifb %s: %w", a.Name, err))
			continue
		}
		req.Log.Infof("deleted stale ifb %s (%s)", a.Name, a.Alias)
	}
	return errors.Join(errs...)
}

func load(req *cni.Request) (*Config, *plan, error) {
	conf := &Config{}
	if err := req.Decode(conf); err != nil {
		return nil, nil, err
	}
	latency := float64(DefaultLatencyMs)
	if conf.LatencyMs != nil {
		latency = *conf.LatencyMs
		if !(latency > 0 && latency <= 10000) {
			return nil, nil, cni.ConfigError("latencyMs: %g is outside (0, 10000]", latency)
		}
	}
	lim, src := conf.staticLimits(), ""
	if lim == nil && conf.RuntimeConfig.Bandwidth != nil {
		lim, src = conf.RuntimeConfig.Bandwidth, "runtimeConfig.bandwidth."
	}
	p := &plan{}
	if lim == nil {
		return conf, p, nil
	}
	var err error
	if p.ingress, err = newTBF(src, "ingress", lim.IngressRate, lim.IngressBurst, latency); err != nil {
		return nil, nil, err
	}
	if p.egress, err = newTBF(src, "egress", lim.EgressRate, lim.EgressBurst, latency); err != nil {
		return nil, nil, err
	}
	return conf, p, nil
}

// staticLimits returns the top-level limits, or nil when none is given.
func (c *Config) staticLimits() *Limits {
	if c.IngressRate == nil && c.IngressBurst == nil && c.EgressRate == nil && c.EgressBurst == nil {
		return nil
	}
	val := func(p *uint64) uint64 {
		if p == nil {
			return 0
		}
		return *p
	}
	return &Limits{val(c.IngressRate), val(c.IngressBurst), val(c.EgressRate), val(c.EgressBurst)}
}

// hostVeth finds the host end of the pod's interface. Shaping needs a
// device in the runtime's netns that carries exactly this pod's traffic,
// which only a veth pair has: macvlan, ipvlan, host-device, vlan and SR-IOV
// interfaces have no host end, so bandwidth cannot serve them.
func hostVeth(req *cni.Request) (netlink.Link, error) {
	var podIndex, peerIndex int
	var kind string
	err := ns.WithNetNSPath(req.Netns, func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(req.IfName)
		if err != nil {
			return fmt.Errorf("find %s in the pod: %w", req.IfName, err)
		}
		podIndex, peerIndex, kind = link.Attrs().Index, link.Attrs().ParentIndex, link.Type()
		return nil
	})
	if err != nil {
		var missing ns.NSPathNotExistErr
		if errors.As(err, &missing) {
			return nil, cni.Errorf(cni.ErrUnknownContainer, "bandwidth: netns %q: %v", req.Netns, err)
		}
		return nil, fmt.Errorf("bandwidth: %w", err)
	}
	if kind != "veth" {
		return nil, cni.ConfigError("bandwidth: %s is a %s, not a veth: bandwidth shapes the host end of a veth pair, so it works only after veth plugins (bridge, ptp); %s interfaces have no host end to shape", req.IfName, kind, kind)
	}
	host, err := netlink.LinkByIndex(peerIndex)
	if err == nil && (host.Type() != "veth" || host.Attrs().ParentIndex != podIndex) {
		err = errors.New("the link with that index here is not its peer")
	}
	if err != nil {
		return nil, fmt.Errorf("bandwidth: the veth peer of %s (ifindex %d) is not in the runtime's network namespace: %v", req.IfName, peerIndex, err)
	}
	return host, nil
}
