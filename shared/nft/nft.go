// Package nft builds nftables rules over netlink with github.com/google/nftables:
// no nft binary runs, so a rule costs no process and a whole change is one
// atomic netlink batch. It holds the few expression builders cnibox's
// applets share (address and port matches, fib, conntrack, NAT, verdicts)
// and rule comments, written as nft(8) writes them so "nft list ruleset"
// shows them.
package nft

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Open returns a connection to nftables in the calling thread's network
// namespace: one socket for all its requests, which Close closes.
func Open() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.AsLasting(), nftables.WithSockOptions(bigBuffers))
	if err != nil {
		return nil, fmt.Errorf("nftables: open netlink: %w", err)
	}
	return c, nil
}

// Close closes a connection from Open, as CloseSocket does.
func Close(c *nftables.Conn) { CloseSocket(closer(c.CloseLasting)) }

type closer func() error

func (f closer) Close() error { return f() }

// Closing a netfilter socket waits, holding the netns's nftables commit
// lock, until the kernel has freed what any commit deleted (an RCU grace
// period, 10-20 ms here; nft and iptables-restore pay it at exit). So
// sockets are closed in the background: the caller does not hold its own
// lock meanwhile, and the process's exit still waits for them. Within a
// HoldSockets (every CNI verb is one: shared/cni holds them), they stay
// open until its release, so that a verb's next commit does not wait for
// its previous socket's grace period, and several DELs in one process
// (the one-exec chain) have their grace periods together.
var sockets struct {
	sync.Mutex
	holds int
	held  []io.Closer
}

// CloseSocket closes a netfilter socket in the background, or at the
// release of the last HoldSockets in force.
func CloseSocket(c io.Closer) {
	sockets.Lock()
	defer sockets.Unlock()
	if sockets.holds > 0 {
		sockets.held = append(sockets.held, c)
		return
	}
	go c.Close()
}

// HoldSockets keeps the netfilter sockets given to CloseSocket open until
// release (of the last hold, when several are in force), which closes
// them in the background.
func HoldSockets() (release func()) {
	sockets.Lock()
	sockets.holds++
	sockets.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			sockets.Lock()
			defer sockets.Unlock()
			if sockets.holds--; sockets.holds > 0 {
				return
			}
			for _, c := range sockets.held {
				go c.Close()
			}
			sockets.held = nil
		})
	}
}

// batchBuffer bounds one transaction (and its acknowledgements). A
// transaction is one sendmsg, which the kernel refuses (EMSGSIZE) when it
// is larger than the socket's send buffer: with the default (about 200
// KiB) a pod with a thousand addresses could not get its rules, nor lose
// them. The buffer is a limit, not an allocation.
const batchBuffer = 64 << 20

// bigBuffers raises the socket's buffers past the sysctl limits
// (SO_*BUFFORCE, as root); where that is refused the defaults stay. The
// receive side matters as much: the kernel answers a transaction with one
// acknowledgement per message, after it has applied it, and drops those
// that do not fit (ENOBUFS), so that a caller could not tell an applied
// transaction from a failed one.
func bigBuffers(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	_ = raw.Control(func(fd uintptr) { forceBuffers(int(fd)) })
	return nil
}

func forceBuffers(fd int) {
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, batchBuffer)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, batchBuffer)
}

// Usable reports whether nftables answers here: the kernel has nf_tables
// and we may talk to it.
func Usable() error {
	c, err := Open()
	if err != nil {
		return err
	}
	if _, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4); err != nil {
		return fmt.Errorf("nftables: list tables: %w", err)
	}
	return nil
}

// Family returns the table family for an address.
func Family(a netip.Addr) nftables.TableFamily {
	if a.Is4() {
		return nftables.TableFamilyIPv4
	}
	return nftables.TableFamilyIPv6
}

// Comment encodes s as a rule comment (at most 254 bytes are kept).
func Comment(s string) []byte {
	if len(s) > 254 {
		s = s[:254]
	}
	return userdata.AppendString(nil, userdata.TypeComment, s)
}

// CommentOf returns a rule's comment ("" when it has none).
func CommentOf(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// Rule expressions. Each builder returns the expressions of one match or
// statement; a rule is their concatenation (see Concat).

// Concat joins expression lists into one rule body.
func Concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func cmpOp(negate bool) expr.CmpOp {
	if negate {
		return expr.CmpOpNeq
	}
	return expr.CmpOpEq
}

// addrMatch matches the source (src) or destination address against p
// ("ip saddr 10.0.0.0/24"), or its negation.
func addrMatch(p netip.Prefix, src, negate bool) []expr.Any {
	p = p.Masked()
	var off, n uint32 = 16, 4 // IPv4 daddr
	if p.Addr().Is4() && src {
		off = 12
	} else if p.Addr().Is6() {
		off, n = 24, 16
		if src {
			off = 8
		}
	}
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}}
	if p.Bits() < int(n*8) {
		mask := make([]byte, n)
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)})
	}
	return append(out, &expr.Cmp{Op: cmpOp(negate), Register: 1, Data: p.Addr().AsSlice()})
}

// SAddr is "ip saddr P" / "ip6 saddr P" ("!=" when negate).
func SAddr(p netip.Prefix, negate bool) []expr.Any { return addrMatch(p, true, negate) }

// DAddr is "ip daddr P" / "ip6 daddr P" ("!=" when negate).
func DAddr(p netip.Prefix, negate bool) []expr.Any { return addrMatch(p, false, negate) }

// NFProto is "meta nfproto ipv4" (or ipv6): needed before an address match
// in an inet table, which sees both families.
func NFProto(v6 bool) []expr.Any {
	p := byte(unix.NFPROTO_IPV4)
	if v6 {
		p = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// Protocol numbers for L4Proto.
const (
	TCP  = unix.IPPROTO_TCP
	UDP  = unix.IPPROTO_UDP
	SCTP = unix.IPPROTO_SCTP
)

// L4Proto is "meta l4proto P".
func L4Proto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// DPort is "th dport N" (the destination port of TCP, UDP and SCTP are at
// the same offset); use it after L4Proto.
func DPort(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// ifname pads an interface name as the kernel compares it.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// IIfName is `iifname "NAME"` ("!=" when negate).
func IIfName(name string, negate bool) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: cmpOp(negate), Register: 1, Data: ifname(name)},
	}
}

// OIfName is `oifname "NAME"` ("!=" when negate).
func OIfName(name string, negate bool) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: cmpOp(negate), Register: 1, Data: ifname(name)},
	}
}

// DAddrLocal is "fib daddr type local": the packet is addressed to this
// node. Without it a DNAT rule also captures traffic the node merely
// routes (CVE-2025-67499).
func DAddrLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)},
	}
}

// ctBits matches "ct KEY & mask != 0" (set) or "== 0" (!set).
func ctBits(key expr.CtKey, mask uint32, set bool) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: key},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: cmpOp(set), Register: 1, Data: make([]byte, 4)},
	}
}

// Conntrack state and status bits.
const (
	CtStateEstablished = 1 << 1 // IP_CT_ESTABLISHED
	CtStateRelated     = 1 << 2 // IP_CT_RELATED
	CtStatusDNAT       = 1 << 5 // IPS_DST_NAT
)

// CtState is "ct state & mask != 0" (set) or "ct state & mask == 0" (!set).
func CtState(mask uint32, set bool) []expr.Any { return ctBits(expr.CtKeySTATE, mask, set) }

// CtStatus is "ct status & mask != 0" (set) or "== 0" (!set).
func CtStatus(mask uint32, set bool) []expr.Any { return ctBits(expr.CtKeySTATUS, mask, set) }

// DNAT is "dnat to ADDR:PORT".
func DNAT(a netip.Addr, port uint16) []expr.Any {
	fam := uint32(unix.NFPROTO_IPV4)
	if a.Is6() {
		fam = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: a.AsSlice()},
		&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 2, RegProtoMax: 2, Specified: true},
	}
}

// Masquerade is "masquerade".
func Masquerade() []expr.Any { return []expr.Any{&expr.Masq{}} }

// Jump is "jump CHAIN".
func Jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

// Drop is "drop".
func Drop() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}} }

// Accept is "accept".
func Accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

// Return is "return".
func Return() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}} }

// TableExists reports whether the table exists (without creating it).
func TableExists(c *nftables.Conn, fam nftables.TableFamily, name string) (bool, error) {
	tables, err := c.ListTablesOfFamily(fam)
	if err != nil {
		return false, fmt.Errorf("nftables: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == name {
			return true, nil
		}
	}
	return false, nil
}

// Chains returns the chains of a table by name.
func Chains(c *nftables.Conn, t *nftables.Table) (map[string]*nftables.Chain, error) {
	all, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return nil, fmt.Errorf("nftables: list chains: %w", err)
	}
	out := map[string]*nftables.Chain{}
	for _, ch := range all {
		if ch.Table.Name == t.Name {
			out[ch.Name] = ch
		}
	}
	return out, nil
}

// SameExprs reports whether a rule read back from the kernel has exactly
// the expressions want, compared in their netlink encoding.
func SameExprs(fam nftables.TableFamily, have, want []expr.Any) bool {
	if len(have) != len(want) {
		return false
	}
	for i := range want {
		a, errA := expr.Marshal(byte(fam), have[i])
		b, errB := expr.Marshal(byte(fam), want[i])
		if errA != nil || errB != nil || !bytes.Equal(a, b) {
			return false
		}
	}
	return true
}

// The kernel frees what a commit deleted or updated (DEL* messages, and a
// NEWCHAIN for a chain that exists: an update) only after an RCU grace
// period, in a work item that the next close of any netfilter socket of
// the netns waits for (5-20 ms, on every close that follows such a commit,
// at the latest the process's exit). Created tables, chains and rules cost
// no such wait. So a writer that only needs its objects to be there sends
// them only where they are missing (EnsureChain), and rewrites a chain only
// where its rules differ (Rewrite): the ruleset is the same, and an ADD
// that finds everything in place commits new rules only.

// EnsureChain queues ch's creation unless have (the table's chains, see
// Chains) holds it, and returns the chain to add rules to.
func EnsureChain(c *nftables.Conn, have map[string]*nftables.Chain, ch *nftables.Chain) *nftables.Chain {
	if e := have[ch.Name]; e != nil {
		return e
	}
	return c.AddChain(ch)
}

// Rewrite queues what makes ch hold exactly rules, in order: nothing when
// it exists with those rules already, else its creation (EnsureChain) or
// a flush, then the rules. Each rule's Table and Chain are set to ch's.
func Rewrite(c *nftables.Conn, have map[string]*nftables.Chain, ch *nftables.Chain, rules []*nftables.Rule) error {
	if e := have[ch.Name]; e != nil {
		cur, err := c.GetRules(e.Table, e)
		if err != nil {
			return fmt.Errorf("nftables: list chain %s: %w", e.Name, err)
		}
		if sameRules(e.Table.Family, cur, rules) {
			return nil
		}
		c.FlushChain(e)
	}
	ch = EnsureChain(c, have, ch)
	for _, r := range rules {
		r.Table, r.Chain = ch.Table, ch
		c.AddRule(r)
	}
	return nil
}

// sameRules reports whether the rules read back have exactly want's
// expressions and userdata (comments), in order.
func sameRules(fam nftables.TableFamily, have, want []*nftables.Rule) bool {
	if len(have) != len(want) {
		return false
	}
	for i := range want {
		if !bytes.Equal(have[i].UserData, want[i].UserData) || !SameExprs(fam, have[i].Exprs, want[i].Exprs) {
			return false
		}
	}
	return true
}
