package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/nft"
)

// With iptables-nft, a batch is written in process: every line is turned
// into the nftables messages iptables-nft 1.8 sends for it (the same
// expressions in the same order, the same xtables match and target
// revisions and bytes), and the whole batch goes to the kernel as one
// transaction. That spares the iptables-restore process (exec, dynamic
// linking, loading its extensions: most of a portmap ADD). The writer
// knows only the rule shapes the applets write, and declines anything else
// (a user-given condition it does not know, legacy iptables, a chain that
// iptables-nft could not have made, a rule to delete by its text); the caller
// then runs iptables-restore, which also reports any error in its words.
// TestWriteNFTLikeIPTables compares every shape with what iptables-restore
// writes, byte for byte, and iptables-save's text of both.

// maxOps bounds a batch written in process: its messages, and the
// kernel's acknowledgement of each, must fit the socket's buffers.
const maxOps = 20000

// errDeclined is wrapped by writeNFT's errors for input it does not write.
var errDeclined = errors.New("not written in process")

func declined(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errDeclined, fmt.Sprintf(format, a...))
}

// nftOp is one line of a batch, compiled.
type nftOp struct {
	kind  byte // 'N' declare a chain, 'A' append, 'I' insert first, 'F' flush, 'X' delete a chain
	table string
	chain string
	exprs []expr.Any
	proto byte   // -p, for the kernel's xtables checks (NFTA_RULE_COMPAT)
	jump  string // the user chain a rule jumps or goes to
}

// writeNFT applies the batches in one nftables transaction, as
// iptables-restore --noflush would. It fails, having changed nothing,
// when a line is not one it can write exactly as iptables-nft does, when a
// chain it needs is not there, or when the kernel refuses the transaction
// (also when any other commit came between its read and its write).
func writeNFT(f Family, batches []*Batch) error {
	var ops []nftOp
	for _, b := range batches {
		if b == nil || b.Empty() {
			continue
		}
		if _, std := builtin[b.Table]; !std {
			return declined("table %s", b.Table)
		}
		for _, c := range b.chains {
			ops = append(ops, nftOp{kind: 'N', table: b.Table, chain: c})
		}
		for _, line := range b.rules {
			op, err := compileLine(f, b.Table, line)
			if err != nil {
				return err
			}
			ops = append(ops, op)
		}
	}
	if len(ops) == 0 {
		return nil
	}
	if len(ops) > maxOps {
		return declined("%d lines", len(ops))
	}
	conn, err := nft.Dial()
	if err != nil {
		return err
	}
	defer nft.CloseSocket(conn) // a flushed chain frees its rules later
	conn.BigBuffers()           // every message's acknowledgement must fit
	fam := f.nfproto()
	gen, err := generation(conn, fam)
	if err != nil {
		return err
	}
	exists := map[string]map[string]bool{} // table -> chain -> compatible
	for _, op := range ops {
		if exists[op.table] != nil {
			continue
		}
		if exists[op.table], err = listChains(conn, fam, op.table); err != nil {
			return err
		}
	}
	var msgs []netlink.Message
	add := func(msgType int, flags netlink.HeaderFlags, attrs []netlink.Attribute) error {
		m, err := request(msgType, netlink.Acknowledge|flags, fam, attrs)
		msgs = append(msgs, m)
		return err
	}
	str := func(s string) []byte { return []byte(s + "\x00") }
	// Like iptables-nft, make the table when it is missing, and a
	// built-in chain when a rule goes into it.
	for table, chains := range exists {
		if chains == nil {
			exists[table] = map[string]bool{}
			if err := add(unix.NFT_MSG_NEWTABLE, netlink.Create|netlink.Excl, []netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: str(table)}}); err != nil {
				return err
			}
		}
	}
	for _, op := range ops {
		std, isBuiltin := builtin[op.table][op.chain]
		if (op.kind == 'A' || op.kind == 'I') && isBuiltin {
			if _, there := exists[op.table][op.chain]; !there {
				if err := add(unix.NFT_MSG_NEWCHAIN, netlink.Create|netlink.Excl, baseChain(op.table, op.chain, std)); err != nil {
					return err
				}
				exists[op.table][op.chain] = true
			}
		}
	}
	for _, op := range ops {
		chains := exists[op.table]
		compatible, there := chains[op.chain]
		if there && !compatible {
			return declined("%s %s %s is not a chain iptables-nft made", f.Name(), op.table, op.chain)
		}
		ref := []netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: str(op.table)}, {Type: unix.NFTA_RULE_CHAIN, Data: str(op.chain)}}
		switch op.kind {
		case 'N':
			if _, std := builtin[op.table][op.chain]; std {
				return declined("declaring built-in chain %s", op.chain)
			}
			if there {
				err = add(unix.NFT_MSG_DELRULE, 0, ref) // iptables-restore flushes a declared chain
			} else {
				err = add(unix.NFT_MSG_NEWCHAIN, netlink.Create|netlink.Excl, []netlink.Attribute{
					{Type: unix.NFTA_CHAIN_TABLE, Data: str(op.table)}, {Type: unix.NFTA_CHAIN_NAME, Data: str(op.chain)}})
				chains[op.chain] = true
			}
		case 'A', 'I':
			if !there {
				return declined("%s %s has no chain %s", f.Name(), op.table, op.chain)
			}
			if op.jump != "" {
				if ok, there := chains[op.jump]; !there || !ok {
					return declined("%s %s has no chain %s to jump to", f.Name(), op.table, op.jump)
				}
			}
			var rule []byte
			if rule, err = ruleAttrs(fam, op); err == nil {
				flags := netlink.Create
				if op.kind == 'A' {
					flags |= netlink.Append
				}
				err = add(unix.NFT_MSG_NEWRULE, flags, append(ref, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS, Data: rule}))
				if err == nil && op.proto != 0 {
					msgs[len(msgs)-1].Data = append(msgs[len(msgs)-1].Data, compatAttr(op.proto)...)
				}
			}
		case 'F':
			if !there {
				return declined("%s %s has no chain %s to flush", f.Name(), op.table, op.chain)
			}
			err = add(unix.NFT_MSG_DELRULE, 0, ref)
		case 'X':
			if _, std := builtin[op.table][op.chain]; std || !there {
				return declined("deleting chain %s", op.chain)
			}
			err = add(unix.NFT_MSG_DELCHAIN, 0, []netlink.Attribute{{Type: unix.NFTA_CHAIN_TABLE, Data: str(op.table)}, {Type: unix.NFTA_CHAIN_NAME, Data: str(op.chain)}})
			delete(chains, op.chain)
		}
		if err != nil {
			return fmt.Errorf("nftables: encode %s %s: %w", op.table, op.chain, err)
		}
	}
	return commit(conn, gen, msgs)
}

// baseChain is NEWCHAIN's attributes for a built-in chain as iptables-nft
// makes it: its standard hook and priority, policy ACCEPT.
func baseChain(table, name string, std [2]int32) []netlink.Attribute {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Uint32(unix.NFTA_HOOK_HOOKNUM, uint32(std[0]))
	ae.Uint32(unix.NFTA_HOOK_PRIORITY, uint32(std[1]))
	hook, _ := ae.Encode()
	return []netlink.Attribute{
		{Type: unix.NFTA_CHAIN_TABLE, Data: []byte(table + "\x00")},
		{Type: unix.NFTA_CHAIN_NAME, Data: []byte(name + "\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_CHAIN_HOOK, Data: hook},
		{Type: unix.NFTA_CHAIN_POLICY, Data: binary.BigEndian.AppendUint32(nil, 1)}, // NF_ACCEPT
		{Type: unix.NFTA_CHAIN_TYPE, Data: []byte(table + "\x00")},
	}
}

// listChains returns the table's chains, each with whether iptables-nft
// could have made it; none when the table does not exist.
func listChains(conn *nft.Sock, fam byte, table string) (map[string]bool, error) {
	req, err := request(unix.NFT_MSG_GETCHAIN, netlink.Dump, fam, []netlink.Attribute{{Type: unix.NFTA_CHAIN_TABLE, Data: []byte(table + "\x00")}})
	if err != nil {
		return nil, err
	}
	msgs, err := conn.Execute(req)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("nftables: list chains of %s: %w", table, err)
	}
	chains := map[string]bool{}
	for _, m := range msgs {
		ci, err := parseChain(m.Data)
		if err != nil {
			return nil, err
		}
		if ci.table == table {
			chains[ci.name] = ci.compatible()
		}
	}
	if len(chains) == 0 {
		// No chain: is there a table?
		req, err := request(unix.NFT_MSG_GETTABLE, 0, fam, []netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: []byte(table + "\x00")}})
		if err != nil {
			return nil, err
		}
		if _, err := conn.Execute(req); errors.Is(err, unix.ENOENT) {
			return nil, nil
		} else if err != nil {
			return nil, fmt.Errorf("nftables: get table %s: %w", table, err)
		}
	}
	return chains, nil
}

// commit sends msgs as one transaction that the kernel applies only if
// the ruleset is still at generation gen, and waits for every answer.
func commit(conn *nft.Sock, gen uint32, msgs []netlink.Message) error {
	const batchGenID = 1 // NFNL_BATCH_GENID
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Uint32(batchGenID, gen)
	genAttr, err := ae.Encode()
	if err != nil {
		return err
	}
	subsys := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES} // res_id, big endian
	all := make([]netlink.Message, 0, len(msgs)+2)
	all = append(all, netlink.Message{Header: netlink.Header{Type: unix.NFNL_MSG_BATCH_BEGIN, Flags: netlink.Request}, Data: append(append([]byte{}, subsys...), genAttr...)})
	all = append(all, msgs...)
	all = append(all, netlink.Message{Header: netlink.Header{Type: unix.NFNL_MSG_BATCH_END, Flags: netlink.Request}, Data: subsys})
	// Never hang on a missing answer: the caller then falls back to
	// iptables, which reads the table again.
	if err := conn.SetReadTimeout(LockWait); err != nil {
		return err
	}
	if err := conn.SendMessages(all); err != nil {
		return err
	}
	// Every acknowledged message is answered (an error, or the refused
	// generation, ends the wait: the transaction was not applied).
	for want := len(msgs); want > 0; {
		got, err := conn.Receive()
		if err != nil {
			return err
		}
		want -= len(got)
	}
	return nil
}

// ruleAttrs encodes the rule's expressions (NFTA_RULE_EXPRESSIONS' content).
func ruleAttrs(fam byte, op nftOp) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	for _, e := range op.exprs {
		b, err := expr.Marshal(fam, e)
		if err != nil {
			return nil, err
		}
		ae.Bytes(unix.NLA_F_NESTED|unix.NFTA_LIST_ELEM, b)
	}
	return ae.Encode()
}

// compatAttr is NFTA_RULE_COMPAT for a rule with -p proto: nft_compat
// hands it to the xtables matches, some of which (multiport) need it.
func compatAttr(proto byte) []byte {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Nested(unix.NFTA_RULE_COMPAT, func(nae *netlink.AttributeEncoder) error {
		nae.Uint32(unix.NFTA_RULE_COMPAT_PROTO, uint32(proto))
		nae.Uint32(unix.NFTA_RULE_COMPAT_FLAGS, 0)
		return nil
	})
	b, _ := ae.Encode()
	return b
}

// splitLine splits an iptables-restore line into its arguments as
// iptables-restore does for the quoting the applets write: double quotes
// around an argument, with \" and \\ inside them. Anything else that
// iptables-restore might read differently (single quotes, a backslash
// outside quotes) is declined.
func splitLine(line string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inArg, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\':
			if i+1 == len(line) || (line[i+1] != '"' && line[i+1] != '\\') {
				return nil, declined("escape in %q", line)
			}
			i++
			cur.WriteByte(line[i])
		case quoted && c == '"':
			quoted = false
			if i+1 < len(line) && line[i+1] != ' ' {
				return nil, declined("text after a quote in %q", line)
			}
		case quoted:
			cur.WriteByte(c)
		case c == '"':
			if inArg {
				return nil, declined("quote inside an argument in %q", line)
			}
			inArg, quoted = true, true
		case c == '\'' || c == '\\' || c == '\t':
			return nil, declined("quoting in %q", line)
		case c == ' ':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			inArg = true
			cur.WriteByte(c)
		}
	}
	if quoted {
		return nil, declined("unterminated quote in %q", line)
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}

// compileLine compiles one rule line of a table's batch.
func compileLine(f Family, table, line string) (nftOp, error) {
	args, err := splitLine(line)
	if err != nil {
		return nftOp{}, err
	}
	op := nftOp{table: table}
	if len(args) < 2 || !validChain(args[1]) {
		return op, declined("line %q", line)
	}
	op.chain = args[1]
	switch args[0] {
	case "-A":
		op.kind = 'A'
		args = args[2:]
	case "-I":
		if len(args) < 3 || args[2] != "1" {
			return op, declined("line %q", line) // -I CHAIN (no number) is also first, but not written here
		}
		op.kind = 'I'
		args = args[3:]
	case "-F", "-X":
		if len(args) != 2 {
			return op, declined("line %q", line)
		}
		op.kind = args[0][1]
		return op, nil
	default:
		return op, declined("line %q", line) // -D and the rest: iptables-restore
	}
	r, err := parseRuleArgs(f, args)
	if err != nil {
		return op, fmt.Errorf("%w (in %q)", err, line)
	}
	op.exprs, op.proto, op.jump = r.exprs(f), r.proto, r.jump
	return op, nil
}

func validChain(name string) bool {
	return name != "" && len(name) < 29 && !strings.ContainsAny(name, " \"'!") && !strings.HasPrefix(name, "-")
}

// ruleSpec is a parsed rule: the parts iptables-nft encodes natively, in
// the order it encodes them, and its xtables matches in command-line order.
type ruleSpec struct {
	in, out       string
	inNeg, outNeg bool
	proto         byte
	src, dst      netip.Prefix
	srcNeg        bool
	dstNeg        bool
	matches       []expr.Any // natively encoded matches and xtables matches, in order
	verdict       expr.Any   // a verdict or a target
	jump          string
}

// protocol is the number of a -p the writer knows (0 for any other).
func protocol(name string) byte {
	switch name {
	case "tcp":
		return unix.IPPROTO_TCP
	case "udp":
		return unix.IPPROTO_UDP
	case "sctp":
		return unix.IPPROTO_SCTP
	}
	return 0
}

// parsePort reads a port as iptables prints it (decimal, not 0).
func parsePort(s string) (uint16, error) {
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil || p == 0 {
		return 0, declined("port %q", s)
	}
	return uint16(p), nil
}

func parseRuleArgs(f Family, args []string) (*ruleSpec, error) {
	r := &ruleSpec{}
	neg := false
	next := func(i int) (string, error) {
		if i+1 >= len(args) {
			return "", declined("%s without a value", args[i])
		}
		return args[i+1], nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "!" {
			if neg {
				return nil, declined("!!")
			}
			neg = true
			continue
		}
		v, err := next(i)
		if err != nil {
			return nil, err
		}
		i++
		switch a {
		case "-i", "-o":
			if !validIface(v) {
				return nil, declined("interface %q", v)
			}
			if a == "-i" {
				if r.in != "" {
					return nil, declined("two -i")
				}
				r.in, r.inNeg = v, neg
			} else {
				if r.out != "" {
					return nil, declined("two -o")
				}
				r.out, r.outNeg = v, neg
			}
		case "-p":
			p := protocol(v)
			if p == 0 || neg || r.proto != 0 {
				return nil, declined("-p %s", v)
			}
			r.proto = p
		case "-s", "-d":
			p, err := parsePrefix(f, v)
			if err != nil {
				return nil, err
			}
			if a == "-s" {
				if r.src.IsValid() {
					return nil, declined("two -s")
				}
				r.src, r.srcNeg = p, neg
			} else {
				if r.dst.IsValid() {
					return nil, declined("two -d")
				}
				r.dst, r.dstNeg = p, neg
			}
		case "-m":
			if neg {
				return nil, declined("! -m")
			}
			n, err := r.parseMatch(f, v, args[i+1:])
			if err != nil {
				return nil, err
			}
			i += n
		case "-j", "-g":
			if neg || r.verdict != nil {
				return nil, declined("%s %s", a, v)
			}
			n, err := r.parseTarget(f, a == "-g", v, args[i+1:])
			if err != nil {
				return nil, err
			}
			i += n
		default:
			return nil, declined("option %s", a)
		}
		neg = false
	}
	if neg {
		return nil, declined("a trailing !")
	}
	return r, nil
}

func validIface(name string) bool {
	return name != "" && len(name) < unix.IFNAMSIZ && !strings.ContainsAny(name, "/ \x00") &&
		!strings.Contains(strings.TrimSuffix(name, "+"), "+")
}

// parsePrefix reads "A" or "A/N" of the family, canonical (no host bits,
// as iptables masks them off and prints them) and not /0.
func parsePrefix(f Family, s string) (netip.Prefix, error) {
	var p netip.Prefix
	var err error
	if strings.Contains(s, "/") {
		p, err = netip.ParsePrefix(s)
	} else {
		var a netip.Addr
		if a, err = netip.ParseAddr(s); err == nil {
			p = netip.PrefixFrom(a, a.BitLen())
		}
	}
	if err != nil || p.Bits() == 0 || p.Addr().Zone() != "" || p.Addr().Is4In6() || p != p.Masked() || p.Addr().Is6() != (f == IPv6) {
		return p, declined("address %q", s)
	}
	return p, nil
}

// parseMatch reads "-m name"'s options from args and returns how many it
// took.
func (r *ruleSpec) parseMatch(f Family, name string, args []string) (int, error) {
	// opts takes the match's options: pairs of [!] --opt value.
	type opt struct {
		name, value string
		neg         bool
	}
	var opts []opt
	n := 0
	for n < len(args) {
		neg := false
		k := n
		if args[k] == "!" {
			neg, k = true, k+1
		}
		if k+1 >= len(args) || !strings.HasPrefix(args[k], "--") {
			break
		}
		opts = append(opts, opt{args[k], args[k+1], neg})
		n = k + 2
	}
	one := func(want string, negOK bool) (string, bool, error) {
		if len(opts) != 1 || opts[0].name != want || (opts[0].neg && !negOK) {
			return "", false, declined("-m %s options", name)
		}
		return opts[0].value, opts[0].neg, nil
	}
	switch name {
	case "comment":
		c, _, err := one("--comment", false)
		if err != nil {
			return 0, err
		}
		if len(c) > 255 || strings.IndexByte(c, 0) >= 0 {
			return 0, declined("comment of %d bytes", len(c))
		}
		info := make(xt.Unknown, 256)
		copy(info, c)
		r.matches = append(r.matches, &expr.Match{Name: "comment", Rev: 0, Info: &info})
	case "tcp", "udp":
		if r.proto != protocol(name) {
			return 0, declined("-m %s without -p %s", name, name)
		}
		v, neg, err := one("--dport", true)
		if err != nil {
			if v, neg, err = one("--sport", true); err != nil {
				return 0, err
			}
		}
		port, err := parsePort(v)
		if err != nil {
			return 0, err
		}
		offset := uint32(2)
		if opts[0].name == "--sport" {
			offset = 0
		}
		r.matches = append(r.matches,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: 2},
			&expr.Cmp{Op: cmpOp(neg), Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)})
	case "sctp":
		if r.proto != unix.IPPROTO_SCTP {
			return 0, declined("-m sctp without -p sctp")
		}
		v, _, err := one("--dport", false)
		if err != nil {
			return 0, err
		}
		port, err := parsePort(v)
		if err != nil {
			return 0, err
		}
		// struct xt_sctp_info: dpts[2], spts[2], chunkmap[64],
		// chunk_match_type, flag_info[4], flag_count, flags, invflags;
		// 296 bytes aligned.
		info := make(xt.Unknown, 296)
		binary.NativeEndian.PutUint16(info[0:], port)
		binary.NativeEndian.PutUint16(info[2:], port)
		for i := range 4 {
			info[268+3*i] = 0xff // flag_info[i].chunktype, as iptables leaves it
		}
		binary.NativeEndian.PutUint32(info[284:], 2) // XT_SCTP_DEST_PORTS
		r.matches = append(r.matches, &expr.Match{Name: "sctp", Rev: 0, Info: &info})
	case "multiport":
		v, _, err := one("--dports", false)
		if err != nil {
			return 0, err
		}
		if r.proto == 0 {
			return 0, declined("-m multiport without -p")
		}
		ports := strings.Split(v, ",")
		if len(ports) > 15 {
			return 0, declined("%d ports", len(ports))
		}
		// struct xt_multiport_v1: flags, count, ports[15], pflags[15], invert.
		info := make(xt.Unknown, 48)
		info[0], info[1] = 1, byte(len(ports)) // XT_MULTIPORT_DESTINATION
		for j, s := range ports {
			p, err := parsePort(s)
			if err != nil {
				return 0, err
			}
			binary.NativeEndian.PutUint16(info[2+2*j:], p)
		}
		r.matches = append(r.matches, &expr.Match{Name: "multiport", Rev: 1, Info: &info})
	case "addrtype":
		v, _, err := one("--dst-type", false)
		if err != nil {
			return 0, err
		}
		if v != "LOCAL" {
			return 0, declined("--dst-type %s", v)
		}
		// struct xt_addrtype_info_v1: source, dest, flags.
		info := make(xt.Unknown, 8)
		binary.NativeEndian.PutUint16(info[2:], 1<<unix.RTN_LOCAL)
		r.matches = append(r.matches, &expr.Match{Name: "addrtype", Rev: 1, Info: &info})
	case "conntrack":
		v, neg, err := one("--ctstate", true)
		if err != nil {
			return 0, err
		}
		var states uint16
		for _, s := range strings.Split(v, ",") {
			bit := ctState(s)
			if bit == 0 {
				return 0, declined("--ctstate %s", s)
			}
			states |= bit
		}
		// struct xt_conntrack_mtinfo3, 168 bytes aligned: match_flags at
		// 146, invert_flags at 148, state_mask at 150.
		info := make(xt.Unknown, 168)
		binary.NativeEndian.PutUint16(info[146:], ctMatchState)
		if neg {
			binary.NativeEndian.PutUint16(info[148:], ctMatchState)
		}
		binary.NativeEndian.PutUint16(info[150:], states)
		r.matches = append(r.matches, &expr.Match{Name: "conntrack", Rev: 3, Info: &info})
	case "mark":
		v, neg, err := one("--mark", true)
		if err != nil {
			return 0, err
		}
		mark, mask, err := parseMark(v)
		if err != nil {
			return 0, err
		}
		r.matches = append(r.matches, &expr.Meta{Key: expr.MetaKeyMARK, Register: 1})
		if mask != 0xffffffff {
			r.matches = append(r.matches, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binary.NativeEndian.AppendUint32(nil, mask), Xor: make([]byte, 4)})
		}
		r.matches = append(r.matches, &expr.Cmp{Op: cmpOp(neg), Register: 1, Data: binary.NativeEndian.AppendUint32(nil, mark&mask)})
	default:
		return 0, declined("-m %s", name)
	}
	return n, nil
}

// ctState is the --ctstate bit of a state's name (0 for an unknown one).
func ctState(name string) uint16 {
	switch name {
	case "INVALID":
		return 1
	case "ESTABLISHED":
		return CtStateEstablished
	case "RELATED":
		return CtStateRelated
	case "NEW":
		return 1 << (1 + 2)
	case "UNTRACKED":
		return 1 << 8
	case "SNAT":
		return 1 << (5 + 1)
	case "DNAT":
		return CtStateDNAT
	}
	return 0
}

// parseMark reads "V" or "V/M" as iptables does (strtoul, base 0).
func parseMark(s string) (mark, mask uint32, err error) {
	v, m, hasMask := strings.Cut(s, "/")
	num := func(s string) (uint32, error) {
		n, err := strconv.ParseUint(s, 0, 32)
		if err != nil || strings.HasPrefix(s, "0") && len(s) > 1 && !strings.HasPrefix(s, "0x") {
			return 0, declined("mark %q", s) // octal, which ParseUint reads differently
		}
		return uint32(n), nil
	}
	if mark, err = num(v); err != nil {
		return 0, 0, err
	}
	mask = 0xffffffff
	if hasMask {
		if mask, err = num(m); err != nil {
			return 0, 0, err
		}
	}
	return mark, mask, nil
}

func cmpOp(neg bool) expr.CmpOp {
	if neg {
		return expr.CmpOpNeq
	}
	return expr.CmpOpEq
}

// parseTarget reads "-j name" (or "-g chain") and its options.
func (r *ruleSpec) parseTarget(f Family, isGoto bool, name string, args []string) (int, error) {
	opts := func(want ...string) error {
		if len(args) != len(want) {
			return declined("-j %s options", name)
		}
		for i, w := range want {
			if w != "" && args[i] != w {
				return declined("-j %s options", name)
			}
		}
		return nil
	}
	if isGoto {
		if !validChain(name) || len(args) != 0 {
			return 0, declined("-g %s", name)
		}
		r.verdict, r.jump = &expr.Verdict{Kind: expr.VerdictGoto, Chain: name}, name
		return 0, nil
	}
	switch name {
	case "ACCEPT", "DROP", "RETURN":
		if err := opts(); err != nil {
			return 0, err
		}
		r.verdict = &expr.Verdict{Kind: map[string]expr.VerdictKind{"ACCEPT": expr.VerdictAccept, "DROP": expr.VerdictDrop, "RETURN": expr.VerdictReturn}[name]}
		return 0, nil
	case "MASQUERADE":
		if err := opts(); err != nil {
			return 0, err
		}
		// IPv4: struct nf_nat_ipv4_multi_range_compat with one empty
		// range; IPv6: an empty struct nf_nat_range.
		info := make(xt.Unknown, 24)
		if f == IPv4 {
			binary.NativeEndian.PutUint32(info, 1)
		} else {
			info = make(xt.Unknown, 40)
		}
		r.verdict = &expr.Target{Name: "MASQUERADE", Rev: 0, Info: &info}
		return 0, nil
	case "DNAT":
		if err := opts("--to-destination", ""); err != nil {
			return 0, err
		}
		ap, err := netip.ParseAddrPort(args[1])
		if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" || ap.Addr().Is4In6() || ap.Addr().Is6() != (f == IPv6) {
			return 0, declined("--to-destination %s", args[1])
		}
		// struct nf_nat_range2: flags, min_addr, max_addr, min_proto,
		// max_proto, base_proto; 44 bytes, 48 aligned.
		info := make(xt.Unknown, 48)
		binary.NativeEndian.PutUint32(info, 1|2) // NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED
		a := ap.Addr().AsSlice()
		copy(info[4:], a)
		copy(info[20:], a)
		binary.BigEndian.PutUint16(info[36:], ap.Port())
		binary.BigEndian.PutUint16(info[38:], ap.Port())
		r.verdict = &expr.Target{Name: "DNAT", Rev: 2, Info: &info}
		return 2, nil
	case "MARK":
		if err := opts("--set-xmark", ""); err != nil {
			return 0, err
		}
		mark, mask, err := parseMark(args[1])
		if err != nil {
			return 0, err
		}
		info := make(xt.Unknown, 8) // struct xt_mark_tginfo2: mark, mask
		binary.NativeEndian.PutUint32(info, mark)
		binary.NativeEndian.PutUint32(info[4:], mask)
		r.verdict = &expr.Target{Name: "MARK", Rev: 2, Info: &info}
		return 2, nil
	}
	if !validChain(name) || strings.ToUpper(name) == name && !strings.HasPrefix(name, "CNI-") || len(args) != 0 {
		return 0, declined("-j %s", name) // a target extension, not a chain
	}
	r.verdict, r.jump = &expr.Verdict{Kind: expr.VerdictJump, Chain: name}, name
	return 0, nil
}

// exprs are the rule's expressions in iptables-nft's order: interfaces,
// protocol, addresses, the matches, a counter, the verdict or target.
func (r *ruleSpec) exprs(f Family) []expr.Any {
	var out []expr.Any
	iface := func(key expr.MetaKey, name string, neg bool) {
		data := []byte(name + "\x00")
		if strings.HasSuffix(name, "+") {
			data = []byte(strings.TrimSuffix(name, "+"))
		}
		out = append(out, &expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: cmpOp(neg), Register: 1, Data: data})
	}
	if r.in != "" {
		iface(expr.MetaKeyIIFNAME, r.in, r.inNeg)
	}
	if r.out != "" {
		iface(expr.MetaKeyOIFNAME, r.out, r.outNeg)
	}
	if r.proto != 0 {
		out = append(out, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{r.proto}})
	}
	src, dst := uint32(12), uint32(16)
	if f == IPv6 {
		src, dst = 8, 24
	}
	addr := func(offset uint32, p netip.Prefix, neg bool) {
		a := p.Addr().AsSlice()
		full := uint32(len(a))
		if p.Bits()%8 == 0 {
			n := uint32(p.Bits() / 8)
			out = append(out, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n},
				&expr.Cmp{Op: cmpOp(neg), Register: 1, Data: a[:n]})
			return
		}
		mask := make([]byte, full)
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		out = append(out, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: full},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: full, Mask: mask, Xor: make([]byte, full)},
			&expr.Cmp{Op: cmpOp(neg), Register: 1, Data: a})
	}
	if r.src.IsValid() {
		addr(src, r.src, r.srcNeg)
	}
	if r.dst.IsValid() {
		addr(dst, r.dst, r.dstNeg)
	}
	out = append(out, r.matches...)
	out = append(out, &expr.Counter{})
	if r.verdict != nil {
		out = append(out, r.verdict)
	}
	return out
}
