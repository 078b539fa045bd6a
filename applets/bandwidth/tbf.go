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
// in scheduler ticks, limit (the queue) in bytes. Burst (bytes) is what the
// bucket holds: the requested burst, or less where the kernel cannot hold
// it (see newTBF). RefBuffer and RefLimit are the reference plugin's
// numbers for the same request, which CHECK also accepts.
type tbf struct {
	Rate   uint64
	Buffer uint32
	Limit  uint32
	Burst  uint32

	RefBuffer, RefLimit uint32
	// Warnings name each value the kernel could not express and what was
	// used instead; ADD logs them.
	Warnings []string
}

// maxTicks is the largest TBF buffer the kernel takes: a u32 of scheduler
// ticks, 274.9 s with the usual 64 ns tick. A bucket cannot hold more than
// that long at its rate.
const maxTicks = math.MaxUint32

// newTBF converts a rate (bits/s) and burst (bits) into a token bucket
// whose queue holds latencyMs worth of traffic at that rate plus the burst,
// with the reference's arithmetic so the numbers are identical at its fixed
// 25 ms. dir is "ingress" or "egress" and src the key prefix, for messages.
//
// It refuses only what the reference refuses (a rate without a burst and
// the reverse, a burst of 4 GiB or more) and what is meaningless: a rate or
// burst below one byte, which the reference turns into a division by zero
// (rate) or a zero bucket the kernel rejects (burst). Everything else is
// accepted: values the kernel cannot express are clamped to the nearest it
// can, with a warning. containerd and CRI-O send this every day: for the
// kubernetes.io/ingress-bandwidth and egress-bandwidth annotations they ask
// for the annotation's rate with a burst of MaxUint32 bits (512 MiB), which
// below ~16 Mbit/s takes longer to drain than the longest bucket the kernel
// can hold. The reference's u32 arithmetic silently wraps there (10 Mbit/s
// gets a bucket of 193 MB, 15 Mbit/s one of 3 MB); cnibox installs the
// longest bucket the kernel can hold and says so.
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
	t := &tbf{Rate: rate, Burst: uint32(burst)}
	tick := netlink.TickInUsec()
	usec := math.Floor(float64(burst) * 1e6 / float64(rate))
	ticks := math.Floor(usec * tick)
	if ticks > maxTicks {
		// The longest bucket the kernel holds, and the bytes it holds at
		// this rate: the burst actually installed.
		ticks = maxTicks
		t.Burst = uint32(math.Floor(maxTicks / tick * float64(rate) / 1e6))
		t.Warnings = append(t.Warnings, fmt.Sprintf("%s: %d bits (%d bytes) at %s %d bits/s takes %.0f s to send, more than the longest token bucket the kernel can hold (%.1f s); using a burst of %d bytes (%d bits, buffer %d ticks)",
			burstKey, burstBits, burst, rateKey, rateBits, usec/1e6, maxTicks/tick/1e6, t.Burst, uint64(t.Burst)*8, uint32(ticks)))
	}
	t.Buffer = uint32(ticks)
	// The queue is latency worth of traffic plus the bucket actually
	// installed, not the burst asked for: a packet at the tail of a full
	// queue then waits latencyMs, as the key promises (tc shows "lat
	// 25ms"). The requested burst would add (burst - bucket) / rate of
	// queueing that no bucket can absorb: 145 s at 10 Mbit/s for
	// containerd's MaxUint32, which is bufferbloat, not burst.
	queue := math.Floor(float64(rate)*latencyMs*1000/1e6) + float64(t.Burst)
	if queue > math.MaxUint32 {
		t.Warnings = append(t.Warnings, fmt.Sprintf("limit: %.0f bytes (%g ms at %s %d bits/s plus the burst) is more than the kernel's 4 GiB queue; using a queue of %d bytes",
			queue, latencyMs, rateKey, rateBits, uint32(math.MaxUint32)))
		queue = math.MaxUint32
	}
	t.Limit = uint32(queue)
	t.RefBuffer, t.RefLimit = t.Buffer, t.Limit
	if latencyMs == DefaultLatencyMs {
		t.RefBuffer, t.RefLimit = referenceTBF(rate, burst, tick)
	}
	return t, nil
}

// referenceTBF is what the reference v1.9.1 installs for rate and burst in
// bytes at its fixed 25 ms, as built for amd64: there its float64 to
// uint32 conversions keep the low 32 bits, so a bucket longer than the
// kernel's maximum wraps around to some shorter one.
func referenceTBF(rate, burst uint64, tick float64) (buffer, limit uint32) {
	wrap := func(f float64) uint32 { return uint32(uint64(f)) }
	usec := wrap(float64(uint32(burst)) * 1e6 / float64(rate))
	buffer = wrap(float64(usec) * tick)
	limit = wrap(float64(rate)*25000/1e6) + uint32(burst)
	return buffer, limit
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

// checkTBF compares the link's root TBF with t: ours, or the reference's
// numbers for the same request.
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
	// The reference's numbers too: a pod it set up before the node
	// switched. Built for arm64 it saturates where amd64 wraps, which
	// gives our buffer with its limit.
	case q.Limit != t.Limit && q.Limit != t.RefLimit:
		return fmt.Errorf("%s: tbf on %s has limit %d B, want %d", what, link.Attrs().Name, q.Limit, t.Limit)
	case q.Buffer != t.Buffer && q.Buffer != t.RefBuffer:
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
// is "mirred egress redirect dev ifb", as the reference sets it up. One
// that already redirects to this IFB (a retried ADD) is kept as it is; one
// left by an earlier attempt whose IFB is gone is replaced, filters and
// all. (A live redirect to another IFB was refused before: see
// otherAttachment.)
func redirect(host netlink.Link, ifb netlink.Link, rb *rollback) error {
	idx := host.Attrs().Index
	if t := redirectTarget(host); t != nil && t.Attrs().Index == ifb.Attrs().Index {
		return nil
	}
	if err := ignoreGone(netlink.QdiscDel(ingressQdisc(idx))); err != nil {
		return fmt.Errorf("remove old ingress qdisc of %s: %w", host.Attrs().Name, err)
	}
	if err := netlink.QdiscAdd(ingressQdisc(idx)); err != nil {
		return fmt.Errorf("add ingress qdisc to %s: %w", host.Attrs().Name, err)
	}
	rb.ingress = true
	filter := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: idx,
			Parent:    netlink.MakeHandle(0xffff, 0),
			Priority:  1,
			Protocol:  unix.ETH_P_ALL,
		},
		ClassId: netlink.MakeHandle(1, 1),
		// The reference's filter, action for action: its RedirIndex
		// becomes a first mirred action (verdict stolen) and its
		// explicit one a second (verdict pass, never reached), so that
		// tc shows the same filter whichever side made it.
		Actions: []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index),
			&netlink.MirredAction{MirredAction: netlink.TCA_EGRESS_REDIR, Ifindex: ifb.Attrs().Index}},
	}
	if err := netlink.FilterAdd(filter); err != nil {
		return fmt.Errorf("add redirect filter on %s to %s: %w", host.Attrs().Name, ifb.Attrs().Name, err)
	}
	return nil
}

// redirectTarget returns the live link that the host veth's ingress
// filters redirect to, or nil (no ingress qdisc, no redirect, or one to a
// device that is gone).
func redirectTarget(host netlink.Link) netlink.Link {
	filters, err := netlinksafe.FilterList(host, netlink.MakeHandle(0xffff, 0))
	if err != nil {
		return nil
	}
	for _, f := range filters {
		u, ok := f.(*netlink.U32)
		if !ok {
			continue
		}
		for _, a := range u.Actions {
			if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR {
				if l, err := netlink.LinkByIndex(m.Ifindex); err == nil {
					return l
				}
			}
		}
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
