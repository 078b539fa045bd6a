package testnet

import (
	"strings"
	"testing"
)

// TestRunBatch checks that a batch returns each command's output in order
// and fails, naming the command, when one fails.
func TestRunBatch(t *testing.T) {
	n := NewNS(t, "batch")
	outs, err := n.RunBatch([][]string{{"echo", "a b"}, {"true"}, {"sh", "-c", "echo 'x'\"'\"'y'; echo z"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a b\n", "", "x'y\nz\n"}; strings.Join(outs, "|") != strings.Join(want, "|") {
		t.Errorf("outputs %q, want %q", outs, want)
	}
	if _, err := n.RunBatch([][]string{{"true"}, {"false"}, {"true"}}); err == nil || !strings.Contains(err.Error(), "false") {
		t.Errorf("a failing command: err %v, want one naming false", err)
	}
	s := &Snapshotter{Node: n, Ignore: DefaultIgnore}
	a := s.Take(t)
	s.Batch = true
	if d := a.Diff(s.Take(t)); d != "" {
		t.Errorf("a batched snapshot differs from a plain one:\n%s", d)
	}
}
