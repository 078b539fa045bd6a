package bandwidth

import (
	"errors"
	"fmt"
	"math"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
)

// tbf is one token bucket, in the kernel's units: rate in bytes/s, buffer
// in scheduler ticks, limit (the queue) in bytes. Burst (bytes) is what
// Buffer was computed from.
type tbf struct {
	Rate   uint64
	Buffer uint32
	Limit  uint32
	Burst  uint32
}

// newTBF converts a rate (bits/s) and burst (bits) into a token bucket
// whose queue holds latencyMs worth of traffic at that rate plus the burst,
// with the reference's arithmetic so the numbers are identical at its fixed
// 25 ms. dir is "ingress" or "egress" and src the key prefix, for messages.
func newTBF(src, dir string, rateBits, burstBits uint64, latencyMs float64) (*tbf, error) {
	rateKey, burstKey := src+dir+"Rate", src+dir+"Burst"
	switch {
	case rateBits == 0 && burstBits == 0:
		return nil, nil
	case burstBits == 0:
		return nil, cni.ConfigError("%s: must be set when %s is", burstKey, rateKey)
	case rateBits == 0:
		return nil, cni.ConfigError("%s: must be set when %s is", rateKey, burstKey)
	case burstBits/8 >= math.MaxUint32:
		return nil, cni.ConfigError("%s: %d bits is too large: the kernel's limit is 4 GiB", burstKey, burstBits)
	case rateBits < 8:
		return nil, cni.ConfigError("%s: %d bits/s is below the minimum of 8 (one byte per second)", rateKey, rateBits)
	case burstBits < 8:
		return nil, cni.ConfigError("%s: %d bits is below the minimum of 8 (one byte)", burstKey, burstBits)
	}
	rate, burst := rateBits/8, burstBits/8
	usec := float64(burst) * 1e6 / float64(rate)
	ticks := math.Floor(usec) * netlink.TickInUsec()
	if usec > math.MaxUint32 || ticks > math.MaxUint32 {
		return nil, cni.ConfigError("%s: %d bits at %s %d bits/s takes %.0f s to drain, more than the kernel can express", burstKey, burstBits, rateKey, rateBits, usec/1e6)
	}
	queue := math.Floor(float64(rate)*latencyMs*1000/1e6) + float64(burst)
	if queue > math.MaxUint32 {
		return nil, cni.ConfigError("latencyMs: %g ms at %s %d bits/s needs a queue above 4 GiB", latencyMs, rateKey, rateBits)
	}
	return &tbf{Rate: rate, Buffer: uint32(ticks), Limit: uint32(queue), Burst: uint32(burst)}, nil
}

// setRootTBF makes t the root qdisc (handle 1:) of the link, replacing
// whatever root it had (a veth's is noqueue; a retried ADD finds ours).
func setRootTBF(index int, t *tbf) error {
	return netlink.QdiscReplace(&netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		Rate:       t.Rate,
		Limit:      t.Limit,
		Buffer:     t.Buffer,
	})
}

// rootTBF returns the link's root TBF with handle 1:, or nil.
func rootTBF(link netlink.Link) (*netlink.Tbf, error) {
	qdiscs, err := netlinksafe.QdiscList(link)
	if err != nil {
		return nil, err
	}
	for _, q := range qdiscs {
		if t, ok := q.(*netlink.Tbf); ok && q.Attrs().Parent == netlink.HANDLE_ROOT && q.Attrs().Handle == netlink.MakeHandle(1, 0) {
			return t, nil
		}
	}
	return nil, nil
}

// checkTBF compares the link's root TBF with t.
func checkTBF(link netlink.Link, t *tbf, what string) error {
	q, err := rootTBF(link)
	if err != nil {
		return fmt.Errorf("%s: list qdiscs of %s: %w", what, link.Attrs().Name, err)
	}
	switch {
	case q == nil:
		return fmt.Errorf("%s: %s has no root tbf qdisc 1:", what, link.Attrs().Name)
	case q.Rate != t.Rate:
		return fmt.Errorf("%s: tbf on %s has rate %d B/s, want %d", what, link.Attrs().Name, q.Rate, t.Rate)
	case q.Limit != t.Limit:
		return fmt.Errorf("%s: tbf on %s has limit %d B, want %d", what, link.Attrs().Name, q.Limit, t.Limit)
	case q.Buffer != t.Buffer:
		return fmt.Errorf("%s: tbf on %s has buffer %d ticks, want %d", what, link.Attrs().Name, q.Buffer, t.Buffer)
	}
	return nil
}

// delRootTBF removes the link's root TBF 1: if it has one.
func delRootTBF(link netlink.Link) error {
	q, err := rootTBF(link)
	if err != nil || q == nil {
		return err
	}
	return ignoreGone(netlink.QdiscDel(q))
}

func ingressQdisc(index int) *netlink.Ingress {
	return &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
}

// redirect sends everything arriving on host (that is, leaving the pod) to
// the IFB: an ingress qdisc ffff: with a match-all u32 filter whose action
// is "mirred egress redirect dev ifb", as the reference sets it up. An
// ingress qdisc left by an earlier attempt is replaced, filters and all.
func redirect(host netlink.Link, ifb netlink.Link) error {
	idx := host.Attrs().Index
	if err := ignoreGone(netlink.QdiscDel(ingressQdisc(idx))); err != nil {
		return fmt.Errorf("remove old ingress qdisc of %s: %w", host.Attrs().Name, err)
	}
	if err := netlink.QdiscAdd(ingressQdisc(idx)); err != nil {
		return fmt.Errorf("add ingress qdisc to %s: %w", host.Attrs().Name, err)
	}
	filter := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: idx,
			Parent:    netlink.MakeHandle(0xffff, 0),
			Priority:  1,
			Protocol:  unix.ETH_P_ALL,
		},
		ClassId: netlink.MakeHandle(1, 1),
		Actions: []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index)},
	}
	if err := netlink.FilterAdd(filter); err != nil {
		return fmt.Errorf("add redirect filter on %s to %s: %w", host.Attrs().Name, ifb.Attrs().Name, err)
	}
	return nil
}

// checkRedirect verifies the ingress qdisc of host and its redirect to ifb.
func checkRedirect(host, ifb netlink.Link) error {
	filters, err := netlinksafe.FilterList(host, netlink.MakeHandle(0xffff, 0))
	if err != nil {
		return fmt.Errorf("egress: list filters of %s: %w", host.Attrs().Name, err)
	}
	for _, f := range filters {
		u, ok := f.(*netlink.U32)
		if !ok {
			continue
		}
		for _, a := range u.Actions {
			if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR && m.Ifindex == ifb.Attrs().Index {
				return nil
			}
		}
	}
	return fmt.Errorf("egress: no filter on %s redirects to %s", host.Attrs().Name, ifb.Attrs().Name)
}

// ignoreGone treats "already gone" as success, for undo and DEL.
func ignoreGone(err error) error {
	if err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENODEV) {
		return nil
	}
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	return err
}
