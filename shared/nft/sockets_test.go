package nft

import (
	"sync/atomic"
	"testing"
	"time"
)

type countClose struct{ n *atomic.Int32 }

func (c countClose) Close() error { c.n.Add(1); return nil }

// TestHoldSockets: sockets given to CloseSocket under holds are closed
// once, when the last hold is released, and right away (in the
// background) without one.
func TestHoldSockets(t *testing.T) {
	var n atomic.Int32
	wait := func(want int32) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); n.Load() != want; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d closed, want %d", n.Load(), want)
			}
		}
	}
	outer := HoldSockets()
	inner := HoldSockets()
	CloseSocket(countClose{&n})
	CloseSocket(countClose{&n})
	inner()
	inner() // a release runs once
	time.Sleep(20 * time.Millisecond)
	if got := n.Load(); got != 0 {
		t.Fatalf("%d closed while a hold is in force", got)
	}
	outer()
	wait(2)
	CloseSocket(countClose{&n})
	wait(3)
}
