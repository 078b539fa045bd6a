// Package release tests what operators install cnibox from: make release's
// tarballs and checksums (reproducible byte for byte), a source tarball's
// build, the node-installer image in a real containerd, the DaemonSet in
// scripts/kubernetes, and make demo. It is test-only.
package release
