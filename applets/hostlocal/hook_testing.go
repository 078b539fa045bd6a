//go:build cniboxtesthooks

package hostlocal

import (
	"os"
	"time"
)

// testHook, in test builds only, stops the process at the point named by
// CNIBOX_TEST_HOOK: it creates CNIBOX_TEST_HOOK_READY and sleeps until the
// test SIGKILLs it.
func testHook(point string) {
	if os.Getenv("CNIBOX_TEST_HOOK") != point {
		return
	}
	if f, err := os.Create(os.Getenv("CNIBOX_TEST_HOOK_READY")); err == nil {
		f.Close()
	}
	time.Sleep(time.Hour)
}
