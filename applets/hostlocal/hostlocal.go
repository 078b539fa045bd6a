package hostlocal

import (
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
)

// Applet is host-local's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:    "host-local",
	Kind:    "ipam",
	Summary: "allocate addresses from ranges, state in files on the node",
	Add:     Add,
	Del:     Del,
	Check:   Check,
	GC:      GC,
	Status:  Status,
}

// Add reserves one address from each range set (the requested one when a
// requested address falls in the set) and returns them with the routes and
// DNS. An attachment that already holds an address of a set is refused;
// when any set fails, what this call reserved is released.
func Add(req *cni.Request) (types.Result, error) {
	p, err := load(req)
	if err != nil {
		return nil, err
	}
	requested, err := assignRequested(p)
	if err != nil {
		return nil, err
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: p.routes}
	if p.conf.IPAM.ResolvConf != "" {
		dns, err := parseResolvConf(p.conf.IPAM.ResolvConf)
		if err != nil {
			return nil, cni.ConfigError("ipam.resolvConf: %v", err)
		}
		res.DNS = *dns
	}

	s, err := openStore(p.dataDir, p.network, req.Log)
	if err != nil {
		return nil, storeError(p, err)
	}
	defer s.close()

	held, legacy, err := s.owned(req.ContainerID, req.IfName)
	if err != nil {
		return nil, storeError(p, err)
	}
	var taken []netip.Addr
	fail := func(err error) (types.Result, error) {
		if uerr := s.unreserve(taken); uerr != nil {
			s.log.Errorf("host-local: release addresses of the failed ADD: %v", uerr)
			s.broken = true
		}
		return nil, err
	}
	for i := range p.sets {
		set := &p.sets[i]
		for _, ip := range held {
			if set.Contains(ip) {
				return fail(fmt.Errorf("host-local: %s has been allocated to %s (%s), duplicate allocation is not allowed", ip, req.ContainerID, req.IfName))
			}
		}
		ip, err := allocate(s, set, i, requested[i], req.ContainerID, req.IfName)
		if err != nil {
			return fail(err)
		}
		taken = append(taken, ip)
		r := set.rangeFor(ip)
		res.IPs = append(res.IPs, &current.IPConfig{
			Address: net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(r.Subnet.Bits(), r.Subnet.Addr().BitLen())},
			Gateway: r.Gateway.AsSlice(),
		})
	}
	record := taken
	if !legacy {
		record = append(slices.Clone(held), taken...)
	}
	if err := s.setRecord(attachmentKey(req.ContainerID, req.IfName), record); err != nil {
		return fail(storeError(p, err))
	}
	testHook("add-recorded")
	req.Log.Note("host-local reserved %v in %s", taken, s.dir)
	return res, nil
}

// allocate reserves ip (when valid) or the next free address of the set,
// round-robin from the last one reserved.
func allocate(s *store, set *RangeSet, idx int, ip netip.Addr, id, ifname string) (netip.Addr, error) {
	if ip.IsValid() {
		ok, err := s.reserve(ip, id, ifname)
		if err != nil {
			return ip, fmt.Errorf("host-local: reserve %s: %w", ip, err)
		}
		if !ok {
			return ip, fmt.Errorf("host-local: requested IP address %s is not available in range set %s", ip, set)
		}
		return ip, s.setLastReserved(idx, ip)
	}
	it := newIterator(set, s.lastReserved(idx))
	for {
		ip, more := it.Next()
		if !more {
			return ip, fmt.Errorf("host-local: no IP addresses available in range set %s (%s)", set.Field, set)
		}
		ok, err := s.reserve(ip, id, ifname)
		if err != nil {
			return ip, fmt.Errorf("host-local: reserve %s: %w", ip, err)
		}
		if ok {
			return ip, s.setLastReserved(idx, ip)
		}
	}
}

// Del releases the attachment's addresses: one index lookup, then the
// files it names, each checked to be the attachment's before it goes.
// Releasing nothing is success.
func Del(req *cni.Request) error {
	conf, dataDir, err := decode(req)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dataDir, req.Name)); errors.Is(err, fs.ErrNotExist) {
		return nil // nothing was ever allocated here
	}
	_ = conf
	s, err := openStoreForDel(dataDir, req.Name, req.Log)
	if err != nil {
		return fmt.Errorf("host-local: %s: %w", filepath.Join(dataDir, req.Name), err)
	}
	defer s.close()
	ips, legacy, err := s.owned(req.ContainerID, req.IfName)
	if err != nil {
		return fmt.Errorf("host-local: %w", err)
	}
	if err := s.unreserve(ips); err != nil {
		s.broken = true
		return fmt.Errorf("host-local: release %v: %w", ips, err)
	}
	if s.tab == nil {
		testHook("del-done")
		return nil // scan mode: the index stays stale (openStoreForDel)
	}
	key := attachmentKey(req.ContainerID, req.IfName)
	if legacy {
		key = legacyKey(req.ContainerID)
	}
	if err := s.setRecord(key, nil); err != nil {
		// The reservations are gone, which is what DEL is for; an
		// index that could not be updated (a full disk on a
		// copy-on-write filesystem) is only marked stale.
		s.log.Warnf("host-local: update the index (the next ADD rebuilds it): %v", err)
		s.broken = true
	}
	if len(ips) > 0 {
		req.Log.Note("host-local released %v in %s", ips, s.dir)
	}
	testHook("del-done")
	return nil
}

// Check verifies that the attachment holds one address in every range set
// and, when there is a prevResult, that those are the addresses it reports.
func Check(req *cni.Request) error {
	p, err := load(req)
	if err != nil {
		return err
	}
	prev, err := cni.PrevResult(&p.conf.NetConf)
	if err != nil {
		return err
	}
	s, err := openStore(p.dataDir, p.network, req.Log)
	if err != nil {
		return storeError(p, err)
	}
	defer s.close()
	held, _, err := s.owned(req.ContainerID, req.IfName)
	if err != nil {
		return storeError(p, err)
	}
	if len(held) == 0 {
		return fmt.Errorf("host-local: failed to find address added by container %s (%s)", req.ContainerID, req.IfName)
	}
	for i := range p.sets {
		set := &p.sets[i]
		var mine []netip.Addr
		for _, ip := range held {
			if set.Contains(ip) {
				mine = append(mine, ip)
			}
		}
		if len(mine) != 1 {
			return fmt.Errorf("host-local: %s (%s) holds %d addresses in range set %s (%s), want 1", req.ContainerID, req.IfName, len(mine), set.Field, set)
		}
		if prev != nil && !resultHas(prev, mine[0]) {
			return fmt.Errorf("host-local: %s (%s) holds %s in range set %s, which prevResult does not list", req.ContainerID, req.IfName, mine[0], set.Field)
		}
	}
	if prev != nil {
		for _, c := range prev.IPs {
			ip, ok := netip.AddrFromSlice(c.Address.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			for i := range p.sets {
				if p.sets[i].Contains(ip) && !slices.Contains(held, ip) {
					return fmt.Errorf("host-local: prevResult lists %s of range set %s, which %s (%s) does not hold", ip, p.sets[i].Field, req.ContainerID, req.IfName)
				}
			}
		}
	}
	return nil
}

func resultHas(res *current.Result, ip netip.Addr) bool {
	for _, c := range res.IPs {
		if a, ok := netip.AddrFromSlice(c.Address.IP); ok && a.Unmap() == ip {
			return true
		}
	}
	return false
}

// GC releases every reservation of this network whose attachment is not
// among the valid ones. Only reservation files are considered: never the
// lock, last_reserved_ip.*, other files or other networks' directories.
// Files of old reference versions hold only a container ID; they are kept
// when any valid attachment has that container ID.
func GC(req *cni.Request) error {
	_, dataDir, err := decode(req)
	if err != nil {
		return err
	}
	valid, err := req.ValidAttachments()
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for a := range valid {
		keep[owner(a.ContainerID, a.IfName)] = true
		keep[strings.TrimSpace(a.ContainerID)] = true
	}
	if _, err := os.Stat(filepath.Join(dataDir, req.Name)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	s, err := openStore(dataDir, req.Name, req.Log)
	if err != nil {
		return fmt.Errorf("host-local: %s: %w", filepath.Join(dataDir, req.Name), err)
	}
	defer s.close()
	entries, err := s.scan()
	if err != nil {
		s.broken = true
		return fmt.Errorf("host-local: gc: %w", err)
	}
	var kept []entry
	var gone []netip.Addr
	for _, e := range entries {
		if e.content != "" && keep[e.content] {
			kept = append(kept, e)
		} else {
			gone = append(gone, e.ip)
		}
	}
	if len(gone) > 0 {
		s.log.Note("host-local released %d stale reservations in %s", len(gone), s.dir)
	}
	if err := s.unreserve(gone); err != nil {
		s.broken = true
		return fmt.Errorf("host-local: gc: %w", err)
	}
	if err := s.rebuild(kept); err != nil {
		s.broken = true
		return fmt.Errorf("host-local: gc: rebuild index: %w", err)
	}
	return nil
}

// Status says whether an ADD could succeed: the configuration is valid,
// the data dir is usable, and every range set has a free address. It does
// not take the lock: it answers from what the directory holds right now.
func Status(req *cni.Request) error {
	p, err := load(req)
	if err != nil {
		return err
	}
	dir := filepath.Join(p.dataDir, p.network)
	if err := usable(dir); err != nil {
		return cni.NotAvailable("host-local: data dir %s is unusable: %v", dir, err)
	}
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // created on the first ADD; usable() checked that it can be
	}
	if err != nil {
		return cni.NotAvailable("host-local: data dir %s is unusable: %v", dir, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return cni.NotAvailable("host-local: data dir %s is unusable: %v", dir, err)
	}
	for i := range p.sets {
		set := &p.sets[i]
		size := set.Size()
		if size.Cmp(big.NewInt(int64(len(names)))) > 0 {
			continue // more addresses than files: not exhausted
		}
		used := 0
		for _, n := range names {
			if ip, ok := reservationName(n); ok && set.Allocatable(ip) {
				used++
			}
		}
		if big.NewInt(int64(used)).Cmp(size) >= 0 {
			return cni.NotAvailable("host-local: range set %s (%s) is exhausted: all %s addresses are reserved", set.Field, set, size)
		}
	}
	return nil
}

// usable checks that dir (or, when it does not exist yet, the nearest
// existing parent, where ADD would create it) is a writable directory.
func usable(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if errors.Is(err, fs.ErrNotExist) && d != filepath.Dir(d) {
			continue
		}
		if err != nil {
			return err
		}
		if !st.IsDir() {
			return fmt.Errorf("%s is not a directory", d)
		}
		if err := unix.Access(d, unix.W_OK|unix.X_OK); err != nil {
			return fmt.Errorf("%s is not writable: %w", d, err)
		}
		return nil
	}
}

// storeError says which store failed; a lock timeout keeps its code (11).
func storeError(p *params, err error) error {
	var e *types.Error
	if errors.As(err, &e) {
		return err
	}
	return fmt.Errorf("host-local: %s: %w", filepath.Join(p.dataDir, p.network), err)
}
