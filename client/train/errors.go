package train

import (
	"errors"
	"fmt"
)

// Errors of the package. Check them with errors.Is; every error returned
// wraps one of them with %w, and an *UnknownVersionError matches
// ErrUnknownVersion.
var (
	// ErrUnknownType: Decode was given a type no Registry entry knows.
	ErrUnknownType = errors.New("train: unknown event type")
	// ErrUnknownVersion: the payload's schema version is newer than the
	// registered one, or older with no upcaster. Returned as an
	// *UnknownVersionError.
	ErrUnknownVersion = errors.New("train: unknown schema version")
	// ErrMalformed: a payload, fence or snapshot that does not decode
	// strictly (bad envelope, wrong field count, unknown field, trailing
	// bytes, invalid value).
	ErrMalformed = errors.New("train: malformed payload")
	// ErrInvalidEvent: Encode or Register was given an event that cannot
	// be written (nil, bad type name, version 0, Validate failed).
	ErrInvalidEvent = errors.New("train: invalid event")
	// ErrDuplicate: Register was called twice for one type name.
	ErrDuplicate = errors.New("train: event type already registered")
	// ErrOutOfOrder: State.Apply was given an offset not above LastOffset.
	ErrOutOfOrder = errors.New("train: input out of order")
	// ErrFoldVersion: UnmarshalState was given a snapshot written by
	// another FoldVersion; fold from zero (or an older snapshot) instead.
	ErrFoldVersion = errors.New("train: snapshot of another fold version")
	// ErrPastTarget: Target.Beyond was given a state that has already
	// applied inputs beyond the target; fold from an earlier snapshot.
	ErrPastTarget = errors.New("train: state already lies beyond the target")
)

// UnknownVersionError reports a payload whose schema version the registry
// cannot turn into the current struct: newer than Current (a newer
// writer; decoding it into the current struct would drop fields), or older
// with no upcaster registered for it.
type UnknownVersionError struct {
	Type    string
	Version uint16 // the payload's version
	Current uint16 // the registered (current) version
}

func (e *UnknownVersionError) Error() string {
	if e.Version > e.Current {
		return fmt.Sprintf("train: %s v%d is newer than the registered v%d", e.Type, e.Version, e.Current)
	}
	return fmt.Sprintf("train: %s v%d has no upcaster to the registered v%d", e.Type, e.Version, e.Current)
}

// Is makes errors.Is(err, ErrUnknownVersion) hold.
func (e *UnknownVersionError) Is(target error) bool { return target == ErrUnknownVersion }
