package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
)

// Error codes of the spec, re-exported so applets need not import libcni's
// types for them. 50 and 51 are STATUS's.
const (
	ErrIncompatibleVersion = types.ErrIncompatibleCNIVersion // 1
	ErrUnsupportedField    = types.ErrUnsupportedField       // 2
	ErrUnknownContainer    = types.ErrUnknownContainer       // 3
	ErrInvalidEnv          = types.ErrInvalidEnvironmentVariables
	ErrIO                  = types.ErrIOFailure       // 5
	ErrDecode              = types.ErrDecodingFailure // 6
	ErrInvalidConfig       = types.ErrInvalidNetworkConfig
	ErrTryAgain            = types.ErrTryAgainLater // 11
	ErrNotAvailable        = uint(50)
	ErrLimitedConnectivity = uint(51)
	ErrInternal            = types.ErrInternal // 999
)

// Errorf returns a CNI error with the given code.
func Errorf(code uint, format string, a ...any) *types.Error {
	return &types.Error{Code: code, Msg: fmt.Sprintf(format, a...)}
}

// ConfigError is an invalid network configuration (code 7). The message
// should start with the offending field, e.g. ConfigError("ipam.ranges[0][1].subnet: %v", err).
func ConfigError(format string, a ...any) *types.Error {
	return Errorf(types.ErrInvalidNetworkConfig, format, a...)
}

// NotAvailable is STATUS's "plugin cannot service ADD" (code 50).
func NotAvailable(format string, a ...any) *types.Error {
	return Errorf(ErrNotAvailable, format, a...)
}

// TryAgain is a transient failure (code 11): a lock that stayed busy, a
// kernel object that is being torn down. The runtime should retry.
func TryAgain(format string, a ...any) *types.Error {
	return Errorf(types.ErrTryAgainLater, format, a...)
}

// DecodeError turns a JSON decoding error into a CNI error that names the
// offending field: syntax errors are code 6 (decode), type mismatches code 7.
func DecodeError(what string, err error) *types.Error {
	var syntax *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	var cniErr *types.Error
	switch {
	case errors.As(err, &cniErr):
		return Errorf(cniErr.Code, "%s: %s", what, cniErr.Error())
	case errors.As(err, &syntax):
		return Errorf(types.ErrDecodingFailure, "%s: malformed JSON at byte %d: %v", what, syntax.Offset, err)
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			field = "(top level)"
		}
		return Errorf(types.ErrInvalidNetworkConfig, "%s: field %q: cannot use JSON %s as %s", what, field, typeErr.Value, typeErr.Type)
	default:
		return Errorf(types.ErrDecodingFailure, "%s: %v", what, err)
	}
}

// LinkName checks a link name from a configuration (field names it in
// the error): 1-15 bytes, not "." or "..", no '/', ':', whitespace, NUL or
// other control byte. The kernel could never hold such a name, and a NUL
// would otherwise reach netlink, where it cuts the name short or fails
// with an error that is no configuration error.
func LinkName(field, name string) error {
	if e := utils.ValidateInterfaceName(name); e != nil {
		return ConfigError("%s: name %q: %s", field, name, e.Msg)
	}
	if strings.ContainsFunc(name, unicode.IsControl) {
		return ConfigError("%s: name %q: contains a NUL or control character", field, name)
	}
	return nil
}

// HashField is how a name too long for where it goes (a link alias, a rule
// comment, a file name) is written instead: "#" and 32 hex digits (128
// bits) of its SHA-256. No valid network name or container ID starts with
// '#', so the short form can never be mistaken for a name.
func HashField(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "#" + hex.EncodeToString(sum[:16])
}
