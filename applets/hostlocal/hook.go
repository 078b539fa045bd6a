//go:build !cniboxtesthooks

package hostlocal

// testHook marks a point of ADD or DEL where the crash tests kill the
// process. Production builds compile it to nothing; builds with the
// cniboxtesthooks tag (hook_testing.go) stop there when asked.
func testHook(string) {}
