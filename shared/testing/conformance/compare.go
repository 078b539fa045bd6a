package conformance

import (
	"fmt"
	"strings"
)

// Divergence is one difference between a run and the reference's run of
// the same case.
type Divergence struct {
	Case string // "<source>/<name>"
	Run  string // "cnibox", "cnibox-main+ref-meta", "switch:ref->cnibox", ...
	// Kind is what differs:
	//   verb    a verb's outcome class (success, error code class)
	//   result  a line of ADD's result JSON (flattened, "-" reference only, "+" run only)
	//   state   a line of the node's or pod's state after ADD (before the first DEL)
	//   leak    a line of state after DEL that the run has and the reference has not
	//   less    a line of state after DEL that the reference has and the run has not
	//   case    the case's own expectation does not hold on the reference
	Kind   string
	Detail string
	// Reason is the declared reason when the divergence is intentional.
	Reason string
}

func (d Divergence) String() string {
	s := fmt.Sprintf("%s [%s] %s: %s", d.Case, d.Run, d.Kind, d.Detail)
	if d.Reason != "" {
		s += "  (intentional: " + d.Reason + ")"
	}
	return s
}

// Key is what intentional declarations match: "kind: detail".
func (d Divergence) Key() string { return d.Kind + ": " + d.Detail }

// compare lists how run differs from ref, both outcomes of plans with the
// same verbs.
func compare(c *Case, p plan, ref, run *outcome, runName string) []Divergence {
	var out []Divergence
	add := func(kind, format string, a ...any) {
		out = append(out, Divergence{Case: c.Name, Run: runName, Kind: kind, Detail: fmt.Sprintf(format, a...)})
	}
	n := newNormalizer(c)
	count := map[string]int{}
	for i, s := range p.steps {
		count[s.verb]++
		label := fmt.Sprintf("%s#%d", s.verb, count[s.verb])
		rs, os := ref.steps[i], run.steps[i]
		if rs.class != os.class {
			add("verb", "%s reference %s, %s %s (reference: %q; %s: %q)", label, rs.class, runName, os.class,
				oneLine(n.str(rs.msg)), runName, oneLine(n.str(os.msg)))
			continue
		}
		if s.verb == "ADD" && rs.class == "ok" {
			onlyRef, onlyRun := diff(n.result(rs.result), n.result(os.result))
			for _, l := range onlyRef {
				add("result", "%s -%s", label, l)
			}
			for _, l := range onlyRun {
				add("result", "%s +%s", label, l)
			}
		}
	}
	// After an ADD that failed on both sides, what only the reference
	// holds is what its failed ADD left behind (the reference does not
	// roll back everything): cnibox leaving less is kind less. What only
	// the run holds stays kind state.
	failedAdd := true
	for i, s := range p.steps {
		if s.verb == "ADD" && (ref.steps[i].class == "ok" || run.steps[i].class == "ok") {
			failedAdd = false
		}
	}
	onlyRef, onlyRun := diff(n.state(ref.added), n.state(run.added))
	for _, l := range onlyRef {
		if failedAdd {
			add("less", "-%s (after a failed ADD)", l)
			continue
		}
		add("state", "-%s", l)
	}
	for _, l := range onlyRun {
		add("state", "+%s", l)
	}
	if ref.hasDel {
		onlyRef, onlyRun := diff(n.state(ref.deleted), n.state(run.deleted))
		for _, l := range onlyRun {
			add("leak", "+%s", l)
		}
		for _, l := range onlyRef {
			add("less", "-%s", l)
		}
	}
	return out
}

// checkCase lists where the reference's run does not do what the case
// says it does: a verb marked "!" that succeeds, a verb not marked that
// fails while every verb before it succeeded, an "expect: both-fail" case
// whose ADD the reference accepts. Those are mistakes in the case (or a
// reference that is not v1.9.1), not divergences of cnibox.
func checkCase(c *Case, p plan, ref *outcome) []Divergence {
	var out []Divergence
	clean := true
	count := map[string]int{}
	deleted := false
	for i, s := range p.steps {
		count[s.verb]++
		rs := ref.steps[i]
		label := fmt.Sprintf("%s#%d", s.verb, count[s.verb])
		// A repeated DEL the reference fails (host-device's) is the
		// reference's limit, not the case's mistake: cnibox must pass it.
		repeatedDel := s.verb == "DEL" && deleted
		deleted = deleted || s.verb == "DEL"
		switch {
		case s.fail && rs.class == "ok":
			out = append(out, Divergence{Case: c.Name, Run: "reference", Kind: "case", Detail: label + " is marked to fail, the reference succeeds"})
		case !s.fail && rs.class != "ok" && clean && c.Expect == "" && !repeatedDel:
			out = append(out, Divergence{Case: c.Name, Run: "reference", Kind: "case",
				Detail: fmt.Sprintf("%s fails on the reference (%s: %s); mark it %s! or fix the case", label, rs.class, oneLine(rs.msg), s.verb)})
		}
		if c.Expect == "both-fail" && s.verb == "ADD" && count["ADD"] == 1 && rs.class == "ok" {
			out = append(out, Divergence{Case: c.Name, Run: "reference", Kind: "case", Detail: "expect both-fail: the reference accepts ADD"})
		}
		clean = clean && rs.class == "ok"
	}
	return out
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
