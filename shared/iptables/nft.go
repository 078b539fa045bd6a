package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/nft"
)

// iptables-nft keeps its tables as ordinary nftables tables (family ip or
// ip6, the iptables table and chain names), so with that variant the
// chains an applet looks at can be read in process over netlink instead of
// one "iptables -S" process per chain (~2-3 ms of CPU each). The reader
// here only reports what it can decode with certainty; an applet that
// cannot positively recognize what it reads falls back to the iptables
// listing, never guesses.

// NFT reports whether the family's iptables and iptables-restore in PATH
// are the nf_tables variant (xtables-nft-multi), found by following their
// symlinks, without running them. Unsure (not found, a wrapper script,
// legacy) is false.
func NFT(f Family) bool {
	if f == IPv6 {
		return nft6()
	}
	return nft4()
}

var (
	nft4 = sync.OnceValue(func() bool { return NFTIn(os.Getenv("PATH"), IPv4) })
	nft6 = sync.OnceValue(func() bool { return NFTIn(os.Getenv("PATH"), IPv6) })
)

// NFTIn is NFT for a given PATH.
func NFTIn(path string, f Family) bool {
	for _, tool := range []string{f.tool(""), f.tool("-restore")} {
		found := ""
		for _, dir := range filepath.SplitList(path) {
			if dir == "" {
				dir = "."
			}
			p := filepath.Join(dir, tool)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
				found = p
				break
			}
		}
		if found == "" {
			return false
		}
		real, err := filepath.EvalSymlinks(found)
		if err != nil || filepath.Base(real) != "xtables-nft-multi" {
			return false
		}
	}
	return true
}

// NFTTable is what ReadNFT read of one iptables-nft table.
type NFTTable struct {
	Name   string
	chains map[string]*NFTChain
	order  []string // ReadNFTTable's
	gen    uint32   // the ruleset's generation it was read at
}

// Chain returns the named chain, nil when it does not exist.
func (t *NFTTable) Chain(name string) *NFTChain {
	if t == nil {
		return nil
	}
	return t.chains[name]
}

// NFTChain is one chain as read over netlink.
type NFTChain struct {
	Name string
	// Compatible says iptables-nft could list the chain: a built-in chain
	// has its standard hook, priority and type, a user chain is no base
	// chain, and every rule is Compatible. Only then do its rules say
	// what "iptables -S" would print.
	Compatible bool
	Rules      []NFTRule
}

// JumpsTo reports whether a rule of the chain jumps or goes to target,
// what Jumps says of the "iptables -S" text of its rules. known is false
// when the chain is not Compatible. A nil chain (absent) has no rules.
func (c *NFTChain) JumpsTo(target string) (jumps, known bool) {
	if c == nil {
		return false, true
	}
	if !c.Compatible {
		return false, false
	}
	for _, r := range c.Rules {
		if r.Target == target {
			return true, true
		}
	}
	return false, true
}

// NFTRule is one rule of an NFTChain.
type NFTRule struct {
	Handle uint64
	// Exprs are the rule's expressions without its counter (every rule
	// iptables-nft writes has one; iptables -S does not print it).
	Exprs []expr.Any
	// Target is the chain the rule jumps or goes to ("" if none): the
	// final verdict, which iptables prints last as -j/-g CHAIN; Goto says
	// it is a goto (-g).
	Target string
	Goto   bool
	// Comments are the texts of the rule's -m comment matches, in order.
	Comments []string
	// Userdata says the rule carries a comment in its userdata (as nft(8)
	// writes it) rather than as an xtables match.
	Userdata bool
	// Compatible says every expression is of a kind iptables-nft writes
	// and reads back (xtables matches and targets, the payload, meta,
	// cmp and bitwise forms of its native matches, counter, verdict).
	Compatible bool
}

// ReadNFT reads the named chains of an iptables-nft table over netlink, in
// the calling thread's network namespace. Chains that do not exist (or a
// table that does not exist) are absent from the result.
func ReadNFT(f Family, table string, chains ...string) (*NFTTable, error) {
	return readTable(f, table, func(conn *nft.Sock, fam byte, t *NFTTable) error {
		for _, name := range chains {
			if t.chains[name] != nil {
				continue
			}
			c, err := readChain(conn, fam, table, name)
			if err != nil {
				return fmt.Errorf("nftables: read %s %s %s: %w", f.Name(), table, name, err)
			}
			if c != nil {
				t.chains[name] = c
			}
		}
		return nil
	})
}

// readTable reads an iptables-nft table with read, in the calling
// thread's network namespace. The chains are read one request at a time:
// the ruleset's generation before and after proves that no commit came
// in between, so the view is one state of the ruleset (as one
// iptables-save would be).
func readTable(f Family, table string, read func(conn *nft.Sock, fam byte, t *NFTTable) error) (*NFTTable, error) {
	conn, err := nft.Dial()
	if err != nil {
		return nil, err
	}
	defer nft.CloseSocket(conn)
	fam := f.nfproto()
	gen, err := generation(conn, fam)
	if err != nil {
		return nil, fmt.Errorf("nftables: read %s %s: %w", f.Name(), table, err)
	}
	t := &NFTTable{Name: table, chains: map[string]*NFTChain{}, gen: gen}
	if err := read(conn, fam, t); err != nil {
		return nil, err
	}
	if again, err := generation(conn, fam); err != nil || again != gen {
		return nil, fmt.Errorf("nftables: read %s %s: the ruleset changed while reading it", f.Name(), table)
	}
	return t, nil
}

// nfproto is the nftables family of f.
func (f Family) nfproto() byte {
	if f == IPv6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

// ReadNFTTable reads every chain of an iptables-nft table, as iptables-save
// does (which prints nothing of the table when one chain is not
// Compatible); Chains lists them. A table that does not exist has none.
func ReadNFTTable(f Family, table string) (*NFTTable, error) {
	return readTable(f, table, func(conn *nft.Sock, fam byte, t *NFTTable) error {
		fail := func(err error) error {
			return fmt.Errorf("nftables: read %s %s: %w", f.Name(), table, err)
		}
		req, err := request(unix.NFT_MSG_GETCHAIN, netlink.Dump, fam, []netlink.Attribute{{Type: unix.NFTA_CHAIN_TABLE, Data: []byte(table + "\x00")}})
		if err != nil {
			return fail(err)
		}
		msgs, err := conn.Execute(req)
		if err != nil {
			return fail(fmt.Errorf("list chains: %w", err))
		}
		for _, m := range msgs {
			ci, err := parseChain(m.Data)
			if err != nil {
				return fail(err)
			}
			if ci.table == table && t.chains[ci.name] == nil {
				t.chains[ci.name] = &NFTChain{Name: ci.name, Compatible: ci.compatible()}
				t.order = append(t.order, ci.name)
			}
		}
		err = dumpRules(conn, fam, []netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")}}, func(r NFTRule, tbl, chain string) error {
			if tbl != table {
				return nil
			}
			c := t.chains[chain]
			if c == nil {
				return fmt.Errorf("list rules: a rule of unknown chain %s", chain)
			}
			c.add(r)
			return nil
		})
		if err != nil {
			return fail(err)
		}
		return nil
	})
}

// Chains returns the names of the chains read by ReadNFTTable.
func (t *NFTTable) Chains() []string {
	if t == nil {
		return nil
	}
	return t.order
}

// generation returns the ruleset's generation id, which every commit
// changes.
func generation(conn *nft.Sock, fam byte) (uint32, error) {
	req, err := request(unix.NFT_MSG_GETGEN, 0, fam, nil)
	if err != nil {
		return 0, err
	}
	msgs, err := conn.Execute(req)
	if err != nil {
		return 0, fmt.Errorf("get generation: %w", err)
	}
	if len(msgs) != 1 || len(msgs[0].Data) < 4 {
		return 0, fmt.Errorf("get generation: %d answers", len(msgs))
	}
	ad, err := netlink.NewAttributeDecoder(msgs[0].Data[4:])
	if err != nil {
		return 0, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() == unix.NFTA_GEN_ID {
			return ad.Uint32(), ad.Err()
		}
	}
	return 0, fmt.Errorf("get generation: no id")
}

func request(msgType int, flags netlink.HeaderFlags, fam byte, attrs []netlink.Attribute) (netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	for _, a := range attrs {
		ae.Bytes(a.Type, a.Data)
	}
	b, err := ae.Encode()
	if err != nil {
		return netlink.Message{}, err
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msgType), Flags: netlink.Request | flags},
		// struct nfgenmsg: family, version, resource id.
		Data: append([]byte{fam, unix.NFNETLINK_V0, 0, 0}, b...),
	}, nil
}

// builtin are the standard base chains of the tables iptables-nft makes:
// hook number and priority.
var builtin = map[string]map[string][2]int32{
	"nat": {
		"PREROUTING": {unix.NF_INET_PRE_ROUTING, -100}, "INPUT": {unix.NF_INET_LOCAL_IN, 100},
		"OUTPUT": {unix.NF_INET_LOCAL_OUT, -100}, "POSTROUTING": {unix.NF_INET_POST_ROUTING, 100},
	},
	"filter": {
		"INPUT": {unix.NF_INET_LOCAL_IN, 0}, "FORWARD": {unix.NF_INET_FORWARD, 0}, "OUTPUT": {unix.NF_INET_LOCAL_OUT, 0},
	},
}

// readChain reads one chain and its rules; nil when it does not exist.
func readChain(conn *nft.Sock, fam byte, table, name string) (*NFTChain, error) {
	attrs := []netlink.Attribute{
		{Type: unix.NFTA_CHAIN_TABLE, Data: []byte(table + "\x00")},
		{Type: unix.NFTA_CHAIN_NAME, Data: []byte(name + "\x00")},
	}
	req, err := request(unix.NFT_MSG_GETCHAIN, 0, fam, attrs)
	if err != nil {
		return nil, err
	}
	msgs, err := conn.Execute(req)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil // no such chain or table
	}
	if err != nil {
		return nil, err
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("get chain: %d answers", len(msgs))
	}
	ci, err := parseChain(msgs[0].Data)
	if err != nil {
		return nil, err
	}
	if ci.table != table || ci.name != name {
		return nil, fmt.Errorf("get chain: got %s %s", ci.table, ci.name)
	}
	c := &NFTChain{Name: name, Compatible: ci.compatible()}

	err = dumpRules(conn, fam, []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(name + "\x00")},
	}, func(r NFTRule, tbl, chain string) error {
		if tbl != table || chain != name {
			// The kernel filters the dump by table and chain; a rule of
			// another means it did not, and the view is not what we asked.
			return fmt.Errorf("list rules: got a rule of %s %s", tbl, chain)
		}
		c.add(r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// dumpRules dumps the rules that attrs select (a table, and a chain of it)
// and passes each to each with the table and chain it says it is of.
func dumpRules(conn *nft.Sock, fam byte, attrs []netlink.Attribute, each func(r NFTRule, table, chain string) error) error {
	req, err := request(unix.NFT_MSG_GETRULE, netlink.Dump, fam, attrs)
	if err != nil {
		return err
	}
	msgs, err := conn.Execute(req)
	if err != nil {
		return fmt.Errorf("list rules: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Flags&netlink.DumpInterrupted != 0 {
			return fmt.Errorf("list rules: dump interrupted")
		}
		r, tbl, chain, err := parseRule(fam, m.Data)
		if err != nil {
			return err
		}
		if err := each(r, tbl, chain); err != nil {
			return err
		}
	}
	return nil
}

// add appends r to the chain's rules.
func (c *NFTChain) add(r NFTRule) {
	c.Compatible = c.Compatible && r.Compatible
	c.Rules = append(c.Rules, r)
}

// chainInfo is what a chain message says of the chain.
type chainInfo struct {
	table, name string
	base        bool
	hook        uint32
	prio        int32
	typ         string
}

// compatible reports whether iptables-nft could have made the chain: a
// built-in chain with its standard hook, priority and type, or a user
// chain that is no base chain, in one of the tables it knows.
func (ci chainInfo) compatible() bool {
	if std, ok := builtin[ci.table][ci.name]; ok {
		return ci.base && int32(ci.hook) == std[0] && ci.prio == std[1] && ci.typ == ci.table
	}
	return !ci.base && builtin[ci.table] != nil
}

func parseChain(b []byte) (ci chainInfo, err error) {
	if len(b) < 4 {
		return ci, fmt.Errorf("short chain message")
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return ci, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_CHAIN_TABLE:
			ci.table = ad.String()
		case unix.NFTA_CHAIN_NAME:
			ci.name = ad.String()
		case unix.NFTA_CHAIN_HOOK:
			ci.base = true
			ad.Nested(func(nd *netlink.AttributeDecoder) error {
				for nd.Next() {
					switch nd.Type() {
					case unix.NFTA_HOOK_HOOKNUM:
						ci.hook = nd.Uint32()
					case unix.NFTA_HOOK_PRIORITY:
						ci.prio = int32(nd.Uint32())
					}
				}
				return nil
			})
		case unix.NFTA_CHAIN_TYPE:
			ci.typ = ad.String()
		}
	}
	return ci, ad.Err()
}

func parseRule(fam byte, b []byte) (r NFTRule, table, chain string, err error) {
	if len(b) < 4 {
		return r, "", "", fmt.Errorf("short rule message")
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return r, "", "", err
	}
	ad.ByteOrder = binary.BigEndian
	r.Compatible = true
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_TABLE:
			table = ad.String()
		case unix.NFTA_RULE_CHAIN:
			chain = ad.String()
		case unix.NFTA_RULE_HANDLE:
			r.Handle = ad.Uint64()
		case unix.NFTA_RULE_USERDATA:
			if _, ok := userdata.GetString(ad.Bytes(), userdata.TypeComment); ok {
				r.Userdata = true
			}
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(ld *netlink.AttributeDecoder) error {
				for ld.Next() {
					if ld.Type() != unix.NFTA_LIST_ELEM {
						r.Compatible = false
						continue
					}
					ld.Nested(func(ed *netlink.AttributeDecoder) error {
						var name string
						var data []byte
						for ed.Next() {
							switch ed.Type() {
							case unix.NFTA_EXPR_NAME:
								name = ed.String()
							case unix.NFTA_EXPR_DATA:
								data = ed.Bytes()
							}
						}
						r.add(fam, name, data)
						return nil
					})
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return r, table, chain, err
	}
	// iptables prints the verdict last: one anywhere else is not a rule
	// it wrote.
	for i, e := range r.Exprs {
		if v, ok := e.(*expr.Verdict); ok {
			switch {
			case i != len(r.Exprs)-1:
				r.Compatible = false
			case v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto:
				r.Target, r.Goto = v.Chain, v.Kind == expr.VerdictGoto
			case v.Kind != expr.VerdictAccept && v.Kind != expr.VerdictDrop && v.Kind != expr.VerdictReturn:
				r.Compatible = false // continue, break, queue: not iptables'
			}
		}
	}
	return r, table, chain, nil
}

// add decodes one expression into r, marking r incompatible when it is of
// a kind (or form) iptables-nft does not write.
func (r *NFTRule) add(fam byte, name string, data []byte) {
	var e expr.Any
	switch name {
	case "counter":
		return
	case "match":
		e = &expr.Match{}
	case "target":
		e = &expr.Target{}
	case "payload":
		e = &expr.Payload{}
	case "meta":
		e = &expr.Meta{}
	case "cmp":
		e = &expr.Cmp{}
	case "bitwise":
		e = &expr.Bitwise{}
	case "immediate":
		e = &expr.Verdict{}
	default:
		r.Compatible = false
		return
	}
	if err := expr.Unmarshal(fam, data, e); err != nil {
		r.Compatible = false
		return
	}
	switch x := e.(type) {
	case *expr.Verdict:
		// An immediate that is no verdict loads a register: not iptables'.
		var imm expr.Immediate
		if expr.Unmarshal(fam, data, &imm) != nil || imm.Register != unix.NFT_REG_VERDICT {
			r.Compatible = false
		}
	case *expr.Match:
		if c, ok := x.Info.(*xt.Comment); ok && x.Name == "comment" {
			r.Comments = append(r.Comments, string(*c))
		}
	case *expr.Meta:
		switch x.Key {
		case expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME, expr.MetaKeyL4PROTO, expr.MetaKeyMARK:
		default:
			r.Compatible = false
		}
		if x.SourceRegister {
			r.Compatible = false
		}
	case *expr.Payload:
		if x.OperationType != expr.PayloadLoad || !payloadIPTables(fam, x) {
			r.Compatible = false
		}
	}
	r.Exprs = append(r.Exprs, e)
}

// payloadIPTables reports whether a payload load is one of iptables-nft's
// native matches: source or destination address, transport ports.
func payloadIPTables(fam byte, p *expr.Payload) bool {
	switch p.Base {
	case expr.PayloadBaseNetworkHeader:
		if fam == unix.NFPROTO_IPV4 {
			return (p.Offset == 12 || p.Offset == 16) && p.Len >= 1 && p.Len <= 4
		}
		return (p.Offset == 8 || p.Offset == 24) && p.Len >= 1 && p.Len <= 16
	case expr.PayloadBaseTransportHeader:
		return (p.Offset == 0 || p.Offset == 2) && p.Len == 2
	}
	return false
}

// SaveString writes an argument as iptables -S and iptables-save print it
// (xtables_save_string): bare when it is only letters, digits, '_' and
// '-', else in double quotes with '"', '\' and '\” escaped.
func SaveString(s string) string {
	bare := s != ""
	for _, c := range s {
		if !(c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			bare = false
			break
		}
	}
	if bare {
		return s
	}
	var b []byte
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' || s[i] == '\'' {
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return string(append(b, '"'))
}

// NFTRuleRef names one rule of an NFTTable by its chain and handle.
type NFTRuleRef struct {
	Chain  string
	Handle uint64
}

// DeleteNFT deletes, in one atomic nftables transaction, the rules by
// handle and then the chains (flushed first) of the iptables-nft table t
// was read from: the same change as iptables-restore's "-D CHAIN rule",
// "-F CHAIN", "-X CHAIN" lines, without the process. The transaction
// carries the generation t was read at, so the kernel refuses it if any
// commit came since: it changes exactly the state that was read, or
// nothing. It also fails as a whole if a chain is still referenced; the
// caller then falls back to iptables.
func DeleteNFT(f Family, t *NFTTable, rules []NFTRuleRef, chains []string) error {
	fam := f.nfproto()
	fail := func(err error) error { return fmt.Errorf("nftables: delete from %s %s: %w", f.Name(), t.Name, err) }
	var msgs []netlink.Message
	add := func(msgType int, attrs []netlink.Attribute) error {
		m, err := request(msgType, netlink.Acknowledge, fam, attrs)
		msgs = append(msgs, m)
		return err
	}
	str := func(s string) []byte { return []byte(s + "\x00") }
	for _, r := range rules {
		handle := binary.BigEndian.AppendUint64(nil, r.Handle)
		if err := add(unix.NFT_MSG_DELRULE, []netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: str(t.Name)},
			{Type: unix.NFTA_RULE_CHAIN, Data: str(r.Chain)}, {Type: unix.NFTA_RULE_HANDLE, Data: handle}}); err != nil {
			return fail(err)
		}
	}
	for _, c := range chains {
		// A DELRULE without a handle flushes the chain.
		if err := add(unix.NFT_MSG_DELRULE, []netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: str(t.Name)}, {Type: unix.NFTA_RULE_CHAIN, Data: str(c)}}); err != nil {
			return fail(err)
		}
		if err := add(unix.NFT_MSG_DELCHAIN, []netlink.Attribute{{Type: unix.NFTA_CHAIN_TABLE, Data: str(t.Name)}, {Type: unix.NFTA_CHAIN_NAME, Data: str(c)}}); err != nil {
			return fail(err)
		}
	}
	conn, err := nft.Dial()
	if err != nil {
		return fail(err)
	}
	defer nft.CloseSocket(conn)
	conn.BigBuffers() // every message's acknowledgement must fit
	if err := commit(conn, t.gen, msgs); err != nil {
		return fail(err)
	}
	return nil
}

// Find returns the handles of the chain's rules that iptables -S prints as
// want (a rule text without "-A CHAIN", ending in "-j TARGET ..."). render
// prints the rule shapes the caller knows. A rule it does not know is told
// apart from want by what it ends in (a verdict or target other than
// want's prints another "-j"); one that ends like want but cannot be
// printed leaves the answer unknown. known is false when the chain is not
// Compatible; a nil chain has no rules.
func (c *NFTChain) Find(want string, render func(NFTRule) (string, bool)) (handles []uint64, known bool) {
	if c == nil {
		return nil, true
	}
	if !c.Compatible {
		return nil, false
	}
	target := targetOf(want)
	for _, r := range c.Rules {
		if end, ok := r.end(); ok && end != target {
			continue
		}
		text, ok := render(r)
		if !ok {
			return nil, false
		}
		if text == want {
			handles = append(handles, r.Handle)
		}
	}
	return handles, true
}

// FindAll is Find for many rules in one pass over the chain: the handles
// of the rules that print as each of wants. Calling Find once per rule
// renders the whole chain each time, quadratic in a pod with thousands of
// addresses; this renders each rule once.
func (c *NFTChain) FindAll(wants []string, render func(NFTRule) (string, bool)) (handles map[string][]uint64, known bool) {
	if c == nil {
		return nil, true
	}
	if !c.Compatible {
		return nil, false
	}
	targets, want := map[string]bool{}, map[string]bool{}
	for _, w := range wants {
		targets[targetOf(w)], want[w] = true, true
	}
	handles = map[string][]uint64{}
	for _, r := range c.Rules {
		if end, ok := r.end(); ok && !targets[end] {
			continue
		}
		text, ok := render(r)
		if !ok {
			return nil, false
		}
		if want[text] {
			handles[text] = append(handles[text], r.Handle)
		}
	}
	return handles, true
}

// Has reports whether a rule of the chain prints as want (see Find).
func (c *NFTChain) Has(want string, render func(NFTRule) (string, bool)) (has, known bool) {
	h, known := c.Find(want, render)
	return len(h) > 0, known
}

// targetOf is the TARGET of a rule text's last "-j TARGET" ("" if none).
func targetOf(rule string) string {
	i := strings.LastIndex(" "+rule, " -j ")
	if i < 0 {
		return ""
	}
	f := strings.Fields(rule[i+3:])
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// end is what iptables prints after the rule's "-j": the verdict, the
// chain jumped to or the target's name, "" for a rule with none. ok is
// false when that is not certain (a goto, which prints "-g", or a verdict
// iptables has no name for).
func (r NFTRule) end() (string, bool) {
	if len(r.Exprs) == 0 {
		return "", true
	}
	switch x := r.Exprs[len(r.Exprs)-1].(type) {
	case *expr.Verdict:
		switch x.Kind {
		case expr.VerdictAccept:
			return "ACCEPT", true
		case expr.VerdictDrop:
			return "DROP", true
		case expr.VerdictReturn:
			return "RETURN", true
		case expr.VerdictJump:
			return x.Chain, true
		}
		return "", false
	case *expr.Target:
		return x.Name, true
	}
	for _, e := range r.Exprs {
		if _, ok := e.(*expr.Target); ok {
			return "", false // a target that is not last
		}
	}
	return "", true
}

// AddrMatch prints a payload load of the source or destination address and
// the compare that follows it as iptables does ("-s 10.0.0.2/32"); only
// the forms iptables-nft writes for a byte-aligned prefix (no bitwise).
func AddrMatch(p *expr.Payload, c *expr.Cmp, f Family) (string, bool) {
	full, src, dst := uint32(4), uint32(12), uint32(16)
	if f == IPv6 {
		full, src, dst = 16, 8, 24
	}
	if p.Base != expr.PayloadBaseNetworkHeader || p.OperationType != expr.PayloadLoad ||
		c.Op != expr.CmpOpEq || c.Register != p.DestRegister || uint32(len(c.Data)) != p.Len ||
		p.Len == 0 || p.Len > full {
		return "", false
	}
	flag := ""
	switch p.Offset {
	case src:
		flag = "-s "
	case dst:
		flag = "-d "
	default:
		return "", false
	}
	ip := make(net.IP, full)
	copy(ip, c.Data)
	return fmt.Sprintf("%s%s/%d", flag, ip, p.Len*8), true
}

// The conntrack match's flag and state bits (linux/netfilter/xt_conntrack.h).
const (
	ctMatchState = 1 << 0
	// CtStateEstablished and the others are the --ctstate bits.
	CtStateEstablished = 1 << (1 + 0) // IP_CT_ESTABLISHED
	CtStateRelated     = 1 << (1 + 1) // IP_CT_RELATED
	CtStateDNAT        = 1 << (5 + 2) // IP_CT_NUMBER + 2
)

// CtState decodes a conntrack match (revision 3, as iptables-nft writes
// it) that tests only --ctstate: the state bits and whether it is negated.
func CtState(m *expr.Match) (states uint16, invert, ok bool) {
	c, isCt := m.Info.(*xt.ConntrackMtinfo3)
	if m.Name != "conntrack" || m.Rev != 3 || !isCt {
		return 0, false, false
	}
	got := *c
	for _, p := range []*[]byte{
		(*[]byte)(&got.OrigSrcAddr), (*[]byte)(&got.OrigSrcMask), (*[]byte)(&got.OrigDstAddr), (*[]byte)(&got.OrigDstMask),
		(*[]byte)(&got.ReplSrcAddr), (*[]byte)(&got.ReplSrcMask), (*[]byte)(&got.ReplDstAddr), (*[]byte)(&got.ReplDstMask),
	} {
		for _, b := range *p {
			if b != 0 {
				return 0, false, false
			}
		}
		*p = nil
	}
	want := xt.ConntrackMtinfo3{}
	want.MatchFlags = ctMatchState
	want.InvertFlags = got.InvertFlags
	want.StateMask = got.StateMask
	if fmt.Sprint(got) != fmt.Sprint(want) || got.InvertFlags&^ctMatchState != 0 {
		return 0, false, false
	}
	return got.StateMask, got.InvertFlags != 0, true
}
