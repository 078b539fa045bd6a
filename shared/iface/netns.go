package iface

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnibox/cnibox/shared/cni"
)

// OpenNetns opens the pod's network namespace. A path that does not exist
// is the spec's "unknown container" (code 3), so the runtime knows there
// is nothing there to clean up; a path that is not a netns is a plain error.
func OpenNetns(path string) (ns.NetNS, error) {
	netns, err := ns.GetNS(path)
	if err != nil {
		if NetnsGone(err) {
			return nil, cni.Errorf(cni.ErrUnknownContainer, "netns %q: %v", path, err)
		}
		return nil, fmt.Errorf("open netns %q: %w", path, err)
	}
	return netns, nil
}

// NetnsGone reports whether err says that a netns path does not exist.
func NetnsGone(err error) bool {
	var missing ns.NSPathNotExistErr
	if errors.As(err, &missing) {
		return true
	}
	var e *types.Error
	return errors.As(err, &e) && e.Code == cni.ErrUnknownContainer
}
