package conformance

import (
	"fmt"
	"regexp"
	"strings"
)

// Intentional is a divergence from the reference that cnibox keeps on
// purpose. Every declaration is a row of README.md's "Differences from
// the reference" table (TestReadmeTable keeps the two the same).
type Intentional struct {
	// Cases matches the case name ("<source>/<name>"), Runs the run name
	// ("cnibox", "cnibox-main+ref-meta", "switch:ref->cnibox", ...; empty:
	// every run), Divergence the divergence's "kind: detail".
	Cases, Runs, Divergence string
	// Summary is the table's "what differs" column; Reason why.
	Summary, Reason string
}

// Intentionals are the declared divergences. Keep the patterns as narrow
// as the difference: a pattern that hides a different divergence
// weakens the comparison.
var Intentionals = []Intentional{}

var compiled = map[string]*regexp.Regexp{}

func re(s string) *regexp.Regexp {
	if r, ok := compiled[s]; ok {
		return r
	}
	r := regexp.MustCompile("^(?:" + s + ")")
	compiled[s] = r
	return r
}

func init() {
	for _, i := range Intentionals {
		re(i.Cases)
		re(i.Runs)
		re(i.Divergence)
	}
}

// classify returns the declaration d matches, if any.
func classify(d Divergence) *Intentional {
	for i := range Intentionals {
		in := &Intentionals[i]
		if re(in.Cases).MatchString(d.Case) && (in.Runs == "" || re(in.Runs).MatchString(d.Run)) && re(in.Divergence).MatchString(d.Key()) {
			return in
		}
	}
	return nil
}

// ReadmeTable is the markdown table of Intentionals, as README.md holds it.
func ReadmeTable() string {
	var b strings.Builder
	b.WriteString("| Cases | What differs | Why |\n|---|---|---|\n")
	for _, i := range Intentionals {
		cases := i.Cases
		if i.Runs != "" {
			cases += " (" + i.Runs + ")"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", strings.ReplaceAll(cases, "|", `\|`), strings.ReplaceAll(i.Summary, "|", `\|`), strings.ReplaceAll(i.Reason, "|", `\|`))
	}
	return b.String()
}
