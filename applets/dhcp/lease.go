package dhcp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	current "github.com/containernetworking/cni/pkg/types/100"
)

// errGone says the lease's netns or interface no longer exists: there is
// nothing left to renew or release.
var errGone = errors.New("interface is gone")

// lease is one lease the daemon holds and keeps alive.
type lease struct {
	d *daemon

	mu    sync.Mutex
	rec   record
	ack   *dhcpv4.DHCPv4
	bound time.Time
	conf  *Config

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func newLease(d *daemon, rec record, conf *Config, ack *dhcpv4.DHCPv4) *lease {
	ctx, cancel := context.WithCancel(context.Background())
	return &lease{d: d, rec: rec, conf: conf, ack: ack, bound: rec.Bound, ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

func (l *lease) result() (*current.Result, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return resultFromACK(l.ack, l.conf.IPAM.Priority)
}

// minLease is the shortest lease the daemon keeps: a shorter one is
// renewed as if it were this long (renewal after 2 s).
const minLease = 4 * time.Second

// times returns when to renew (T1), rebind (T2) and when the lease
// expires, from the options of the last ACK (RFC 2131 4.4.5 defaults).
func (l *lease) times() (t1, t2, expiry time.Time) {
	l.mu.Lock()
	ack, bound := l.ack, l.bound
	l.mu.Unlock()
	// A server may offer a lease of 0 or 1 s: without a floor the daemon
	// would renew it in a tight loop. total/8*7 because total*7 overflows
	// for the longest leases (0xffffffff s, "infinity").
	total := max(ack.IPAddressLeaseTime(time.Hour), minLease)
	r := ack.IPAddressRenewalTime(total / 2)
	b := ack.IPAddressRebindingTime(total / 8 * 7)
	if b > total || b <= 0 {
		b = total / 8 * 7
	}
	if r > b || r <= 0 {
		r = min(total/2, b)
	}
	return bound.Add(r), bound.Add(b), bound.Add(total)
}

func (l *lease) expired() bool {
	_, _, exp := l.times()
	return !time.Now().Before(exp)
}

// update records a new ACK in memory and on disk.
func (l *lease) update(ack *dhcpv4.DHCPv4, at time.Time) {
	l.mu.Lock()
	l.ack, l.bound = ack, at
	l.rec.ACK, l.rec.Bound = ack.ToBytes(), at
	rec := l.rec
	l.mu.Unlock()
	if err := l.d.store.put(rec); err != nil {
		l.d.logf("%s: record lease: %v", rec.ClientID, err)
	}
}

func (l *lease) ip() net.IP {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ack.YourIPAddr
}

// maintain keeps the lease alive until it is stopped or its interface
// disappears: renew (unicast) from T1, rebind (broadcast) from T2, and
// after expiry the link is down, as an address we no longer hold must
// not be used, except while a new lease is asked for (RFC 2131 4.4.5).
func (l *lease) maintain() {
	defer close(l.done)
	id := l.rec.ClientID
	failures := 0
	expired := false
	for {
		t1, t2, exp := l.times()
		now := time.Now()
		wait := t1.Sub(now)
		if wait <= 0 {
			var err error
			switch {
			case now.Before(t2):
				err = l.renew()
			case now.Before(exp):
				err = l.rebind()
			default:
				// The address is no longer ours: the link stays down
				// except while asking for a new lease.
				if !expired {
					l.d.logf("%s: lease on %s expired; the link stays down until a new lease", id, l.ip())
					expired = true
				}
				err = l.reacquire()
				if err == nil {
					expired = false
					if rerr := l.restore(); rerr != nil {
						l.d.logf("%s: %v", id, rerr)
					}
				} else {
					_ = l.d.setLink(l.rec.Netns, l.rec.IfName, false)
				}
			}
			switch {
			case err == nil:
				failures = 0
				continue
			case errors.Is(err, errGone):
				l.d.logf("%s: %v; stopping its maintenance", id, err)
				l.d.forget(l)
				return
			case l.ctx.Err() != nil:
				return
			}
			failures++
			l.d.logf("%s: %v", id, err)
			wait = retryWait(now, t2, exp, failures, l.d.resendMax)
		}
		select {
		case <-time.After(wait):
		case <-l.ctx.Done():
			return
		}
	}
}

// retryWait is how long to wait after a failed renew or rebind: half the
// time left to the next deadline, at least a minute (RFC 2131 4.4.5) but
// never past that deadline; after expiry, backoff capped at resendMax.
// A little jitter keeps many pods from renewing in lock step.
func retryWait(now, t2, exp time.Time, failures int, resendMax time.Duration) time.Duration {
	var w time.Duration
	switch {
	case now.Before(t2):
		w = half(t2.Sub(now))
	case now.Before(exp):
		w = half(exp.Sub(now))
	default:
		w = backoff(failures, resendMax)
	}
	return w + time.Duration(rand.Int64N(int64(500*time.Millisecond)))
}

func half(left time.Duration) time.Duration {
	w := left / 2
	if w < time.Minute {
		w = min(time.Minute, left)
	}
	return w
}

// backoff is the wait before retry number n (1-based) of an acquisition:
// four quick retries about 2 s apart, then doubling from 4 s up to max,
// each with up to a second of jitter either way.
func backoff(n int, max time.Duration) time.Duration {
	base := 2 * time.Second
	if n > 4 {
		base = 4 * time.Second
		for i := 5; i < n && base < max; i++ {
			base *= 2
		}
		base = min(base, max)
	}
	j := time.Duration(rand.Int64N(int64(2*time.Second))) - time.Second
	return max1(base + j)
}

func max1(d time.Duration) time.Duration {
	if d < 500*time.Millisecond {
		return 500 * time.Millisecond
	}
	return d
}

// renew asks the server that granted the lease to extend it: a REQUEST
// unicast to it, with ciaddr and without requested-IP or server-ID
// (RFC 2131 4.3.6), from the leased address when it is configured.
func (l *lease) renew() error {
	l.mu.Lock()
	ack := l.ack
	l.mu.Unlock()
	server := ack.ServerIdentifier()
	if server == nil {
		return l.rebind()
	}
	return l.extend("renew", ack, server)
}

// rebind asks any server to extend the lease: the same REQUEST, broadcast.
func (l *lease) rebind() error {
	l.mu.Lock()
	ack := l.ack
	l.mu.Unlock()
	return l.extend("rebind", ack, nil)
}

func (l *lease) extend(what string, ack *dhcpv4.DHCPv4, server net.IP) error {
	req, err := renewRequest(ack, &l.conf.IPAM, l.rec.Args, l.rec.ClientID)
	if err != nil {
		return fmt.Errorf("%s: build request: %w", what, err)
	}
	var from net.IP
	if server != nil {
		from = ack.YourIPAddr
	}
	var reply *dhcpv4.DHCPv4
	err = l.d.withClient(l.rec.Netns, l.rec.IfName, from, server, func(c *nclient4.Client) error {
		ctx, cancel := context.WithTimeout(l.ctx, 2*l.d.timeout)
		defer cancel()
		reply, err = c.SendAndRead(ctx, c.RemoteAddr(), req,
			nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak))
		return err
	})
	if err != nil {
		return fmt.Errorf("%s lease on %s: %w", what, ack.YourIPAddr, err)
	}
	if reply.MessageType() == dhcpv4.MessageTypeNak {
		// The server says the address is no longer ours: start over.
		l.d.logf("%s: %s: server %s refused %s: %s", l.rec.ClientID, what, reply.ServerIdentifier(), ack.YourIPAddr, reply.Message())
		l.mu.Lock()
		l.bound = time.Time{} // expired
		l.mu.Unlock()
		return nil
	}
	l.update(reply, time.Now())
	l.d.logf("%s: %s: %s is ours for %v more", l.rec.ClientID, what, reply.YourIPAddr, reply.IPAddressLeaseTime(time.Hour))
	return nil
}

// renewRequest is the REQUEST of RENEWING and REBINDING (RFC 2131
// 4.3.6, 4.4.5): ciaddr is the leased address, and it carries neither a
// requested address nor a server identifier; a fresh transaction ID.
func renewRequest(ack *dhcpv4.DHCPv4, conf *IPAMConfig, args, id string) (*dhcpv4.DHCPv4, error) {
	xid, err := dhcpv4.GenerateTransactionID()
	if err != nil {
		return nil, err
	}
	mods := append(modifiers(conf, args, id, false), dhcpv4.WithTransactionID(xid),
		dhcpv4.WithoutOption(dhcpv4.OptionRequestedIPAddress), dhcpv4.WithoutOption(dhcpv4.OptionServerIdentifier))
	return dhcpv4.NewRenewFromAck(ack, dhcpv4.PrependModifiers(mods,
		dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(nclient4.MaxMessageSize)))...)
}

// reacquire makes one attempt at a new lease after expiry, asking for
// the old address; maintain paces the attempts.
func (l *lease) reacquire() error {
	old := l.ip()
	ack, err := l.d.acquireOnce(l.ctx, l.rec, l.conf, old)
	var nak *nclient4.ErrNak
	if errors.As(err, &nak) {
		ack, err = l.d.acquireOnce(l.ctx, l.rec, l.conf, nil)
	}
	if err != nil {
		return fmt.Errorf("new lease after expiry: %w", err)
	}
	if !ack.YourIPAddr.Equal(old) {
		l.d.logf("%s: new lease is for %s, not %s: the pod keeps the old address until it is re-added", l.rec.ClientID, ack.YourIPAddr, old)
	}
	l.update(ack, time.Now())
	l.d.logf("%s: new lease on %s after expiry", l.rec.ClientID, ack.YourIPAddr)
	return nil
}

// release sends DHCPRELEASE for the lease (best effort: the server lets
// the lease run out if the message is lost). It goes out of the pod's
// interface when that still exists; main plugins that remove the
// interface before calling IPAM DEL (the reference bridge does) leave
// only the daemon's own network, from which it is unicast to the server,
// which finds the lease by client identifier.
func (l *lease) release() error {
	l.mu.Lock()
	ack := l.ack
	l.mu.Unlock()
	server := ack.ServerIdentifier()
	if server == nil {
		return errors.New("the lease names no server")
	}
	id := dhcpv4.WithOption(dhcpv4.OptClientIdentifier(append([]byte{0}, l.rec.ClientID...)))
	err := l.d.withClient(l.rec.Netns, l.rec.IfName, ack.YourIPAddr, server, func(c *nclient4.Client) error {
		return c.Release(&nclient4.Lease{ACK: ack}, id)
	})
	if !errors.Is(err, errGone) {
		return err
	}
	if err := unicastRelease(ack, id); err != nil {
		return fmt.Errorf("the interface is gone, and from the daemon's network: %w", err)
	}
	return nil
}

// unicastRelease sends DHCPRELEASE for the address of ack (an ACK or an
// OFFER) to its server from the daemon's own network.
func unicastRelease(ack *dhcpv4.DHCPv4, id dhcpv4.Modifier) error {
	server := ack.ServerIdentifier()
	if server == nil {
		return errors.New("the lease names no server")
	}
	msg, err := dhcpv4.NewReleaseFromACK(ack, id)
	if err != nil {
		return err
	}
	conn, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: server, Port: nclient4.ServerPort})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write(msg.ToBytes())
	return err
}

// unacked is an acquireOnce that sent a REQUEST and saw no answer: the
// server may have committed the lease, and only the ACK was lost (the
// interface was deleted meanwhile, for one).
type unacked struct {
	offer *dhcpv4.DHCPv4
	err   error
}

func (u *unacked) Error() string { return u.err.Error() }
func (u *unacked) Unwrap() error { return u.err }

// releaseUnacked releases, best effort, the address a failed acquire
// REQUESTed without an ACK, so the server does not keep it for the whole
// lease time for a client that gave up.
func (d *daemon) releaseUnacked(rec record, offer *dhcpv4.DHCPv4) {
	if offer == nil {
		return
	}
	id := dhcpv4.WithOption(dhcpv4.OptClientIdentifier(append([]byte{0}, rec.ClientID...)))
	if err := unicastRelease(offer, id); err != nil {
		d.logf("%s: release the unacknowledged %s: %v", rec.ClientID, offer.YourIPAddr, err)
		return
	}
	d.logf("%s: gave up: released the unacknowledged %s", rec.ClientID, offer.YourIPAddr)
}

// acquire runs DISCOVER/OFFER/REQUEST/ACK on the interface until it gets
// a lease, backing off with jitter, for at most resendTimeout.
func (d *daemon) acquire(ctx context.Context, rec record, conf *Config, want net.IP) (*dhcpv4.DHCPv4, error) {
	deadline := time.Now().Add(d.resendTimeout)
	var last error
	var pending *dhcpv4.DHCPv4 // the last offer REQUESTed without an answer
	for attempt := 1; ; attempt++ {
		ack, err := d.acquireOnce(ctx, rec, conf, want)
		if err == nil {
			return ack, nil
		}
		if u := (*unacked)(nil); errors.As(err, &u) {
			pending = u.offer
		}
		if errors.Is(err, errGone) || ctx.Err() != nil {
			d.releaseUnacked(rec, pending)
			return nil, err
		}
		var nak *nclient4.ErrNak
		if errors.As(err, &nak) && want != nil {
			want = nil // the old address is taken: take what is offered
		}
		last = err
		wait := backoff(attempt, d.resendMax)
		if time.Now().Add(wait).After(deadline) {
			d.releaseUnacked(rec, pending)
			return nil, fmt.Errorf("no DHCP lease on %s after %d attempts in %v: %w", rec.IfName, attempt, d.resendTimeout, last)
		}
		d.logf("%s: attempt %d: %v; next in %v", rec.ClientID, attempt, err, wait.Round(time.Millisecond))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// acquireOnce runs one DISCOVER/OFFER/REQUEST/ACK, asking for want when
// it is set.
func (d *daemon) acquireOnce(ctx context.Context, rec record, conf *Config, want net.IP) (*dhcpv4.DHCPv4, error) {
	mods := modifiers(&conf.IPAM, rec.Args, rec.ClientID, d.broadcast)
	var ack *dhcpv4.DHCPv4
	err := d.withClient(rec.Netns, rec.IfName, nil, nil, func(c *nclient4.Client) error {
		discover := mods
		if want != nil {
			discover = append(append([]dhcpv4.Modifier(nil), mods...),
				dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(want)))
		}
		offer, err := c.DiscoverOffer(ctx, discover...)
		if err != nil {
			return fmt.Errorf("no offer: %w", err)
		}
		l, err := c.RequestFromOffer(ctx, offer, mods...)
		var nak *nclient4.ErrNak
		if err != nil && !errors.As(err, &nak) {
			return &unacked{offer: offer, err: err}
		}
		if err != nil {
			return err
		}
		ack = l.ACK
		return nil
	})
	if err != nil {
		return nil, err
	}
	if _, err := resultFromACK(ack, 0); err != nil {
		return nil, err
	}
	return ack, nil
}

// withClient opens a DHCP client on the interface inside the netns and
// runs f with it. With from set it sends from that address over UDP (the
// unicast of renew and release), falling back to the raw socket when the
// address cannot be bound; server, when set, is where requests go instead
// of the broadcast address. The sockets are made inside the netns and
// stay bound to it, so f itself runs outside.
func (d *daemon) withClient(netns, ifName string, from, server net.IP, f func(*nclient4.Client) error) error {
	var c *nclient4.Client
	err := ns.WithNetNSPath(d.hostPrefix+netns, func(ns.NetNS) error {
		link, err := netlink.LinkByName(ifName)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return fmt.Errorf("%s in %s: %w", ifName, netns, errGone)
			}
			return fmt.Errorf("find %s: %w", ifName, err)
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			if err := netlink.LinkSetUp(link); err != nil {
				return fmt.Errorf("set %s up: %w", ifName, err)
			}
		}
		waitOperUp(link)
		first, tries := retransmissions(d.timeout)
		opts := []nclient4.ClientOpt{
			nclient4.WithTimeout(first),
			nclient4.WithRetry(tries),
			nclient4.WithHWAddr(link.Attrs().HardwareAddr),
		}
		if server != nil {
			opts = append(opts, nclient4.WithServerAddr(&net.UDPAddr{IP: server, Port: nclient4.ServerPort}))
		}
		if from != nil {
			// A UDP socket on the leased address is true unicast. When
			// the address is not configured, a raw socket sends from it.
			c, err = nclient4.New(ifName, append(opts, nclient4.WithUnicast(&net.UDPAddr{IP: from, Port: nclient4.ClientPort}))...)
			if err == nil {
				return nil
			}
			ifc, err := net.InterfaceByName(ifName)
			if err != nil {
				return fmt.Errorf("find %s: %w", ifName, err)
			}
			raw, err := packet.Listen(ifc, packet.Datagram, unix.ETH_P_IP, nil)
			if err != nil {
				return fmt.Errorf("open raw socket on %s: %w", ifName, err)
			}
			conn := nclient4.NewBroadcastUDPConn(raw, &net.UDPAddr{IP: from, Port: nclient4.ClientPort})
			if c, err = nclient4.NewWithConn(conn, link.Attrs().HardwareAddr, opts...); err != nil {
				raw.Close()
				return fmt.Errorf("open DHCP client on %s: %w", ifName, err)
			}
			return nil
		}
		c, err = nclient4.New(ifName, opts...)
		if err != nil {
			return fmt.Errorf("open DHCP client on %s: %w", ifName, err)
		}
		return nil
	})
	if err != nil {
		var missing ns.NSPathNotExistErr
		if errors.As(err, &missing) {
			return fmt.Errorf("netns %s: %w", netns, errGone)
		}
		return err
	}
	defer c.Close()
	return f(c)
}

// retransmissions splits the wait for one answer (-timeout) into
// retransmissions of the same message, 2 s then doubling, as RFC 2131
// 4.1 asks: a first message lost (a link whose carrier is just coming up
// drops it) then costs seconds, not the whole timeout.
func retransmissions(timeout time.Duration) (first time.Duration, tries int) {
	first = min(2*time.Second, timeout)
	tries = 1
	for total, next := first, 2*first; total+next <= timeout; total, next = total+next, 2*next {
		tries++
	}
	return first, tries
}

// waitOperUp waits, briefly, for a link that was just set up to be
// operationally up: until then the kernel drops what is sent on it.
func waitOperUp(link netlink.Link) {
	for i := 0; i < 40; i++ {
		switch link.Attrs().OperState {
		case netlink.OperUp, netlink.OperUnknown:
			return
		}
		time.Sleep(50 * time.Millisecond)
		l, err := netlink.LinkByIndex(link.Attrs().Index)
		if err != nil {
			return
		}
		link = l
	}
}

// restore sets the link up again after a new lease and puts back what
// taking it down removed: the address (when it is the same) and the
// routes of the IPAM result.
func (l *lease) restore() error {
	res, err := l.result()
	if err != nil {
		return err
	}
	return ns.WithNetNSPath(l.d.hostPrefix+l.rec.Netns, func(ns.NetNS) error {
		link, err := netlink.LinkByName(l.rec.IfName)
		if err != nil {
			return fmt.Errorf("restore %s: %w", l.rec.IfName, err)
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("restore %s: set up: %w", l.rec.IfName, err)
		}
		addr := &netlink.Addr{IPNet: &res.IPs[0].Address}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("restore %s: address %s: %w", l.rec.IfName, addr.IPNet, err)
		}
		for _, r := range res.Routes {
			dst := r.Dst
			route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &dst, Gw: r.GW, Priority: r.Priority}
			if r.Scope != nil {
				route.Scope = netlink.Scope(*r.Scope)
			}
			if err := netlink.RouteReplace(route); err != nil {
				return fmt.Errorf("restore %s: route %s: %w", l.rec.IfName, dst.String(), err)
			}
		}
		return nil
	})
}

// setLink sets the interface up or down (after expiry), best effort.
func (d *daemon) setLink(netns, ifName string, up bool) error {
	return ns.WithNetNSPath(d.hostPrefix+netns, func(ns.NetNS) error {
		link, err := netlink.LinkByName(ifName)
		if err != nil {
			return err
		}
		if up {
			return netlink.LinkSetUp(link)
		}
		return netlink.LinkSetDown(link)
	})
}
