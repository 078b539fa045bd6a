package testnet

import (
	"crypto/sha512"
	"encoding/hex"
	"testing"

	"github.com/cnibox/cnibox/shared/cni"
)

// ForEachVersion runs f as a subtest for each spec version (all of them
// when versions is nil), the way every applet test sweeps the spec.
func ForEachVersion(t *testing.T, versions []string, f func(t *testing.T, version string)) {
	if versions == nil {
		versions = cni.AllVersions
	}
	for _, v := range versions {
		t.Run("cniVersion="+v, func(t *testing.T) { f(t, v) })
	}
}

func cnitoolID(netns string) string {
	sum := sha512.Sum512([]byte(netns))
	return "cnitool-" + hex.EncodeToString(sum[:10])
}
