package tiering

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
)

// Errors of a Target. Check them with errors.Is; the wrapping message
// names the key.
var (
	// ErrNotFound means no object has the key.
	ErrNotFound = errors.New("tiering: object not found")
	// ErrExists means Put found an object already at the key: keys are
	// written once, never overwritten.
	ErrExists = errors.New("tiering: object already exists")
	// ErrChecksum means the bytes Put read were not the bytes it was told
	// to expect, or the store rejected the upload's checksum. Nothing is
	// left at the key.
	ErrChecksum = errors.New("tiering: checksum mismatch")
	// ErrInvalidKey means a key is empty, absolute, or has a "." or ".."
	// element, an empty element or a backslash.
	ErrInvalidKey = errors.New("tiering: invalid object key")
)

// castagnoli is the CRC-32C table: the checksum of segment digests
// (segment.Log.Digest), so an object's checksum is comparable with the
// manifest's digest of the same bytes.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the CRC-32C of p.
func Checksum(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Key  string
	Size int64 // bytes
	// Checksum is the CRC-32C of the object's bytes. List leaves it 0
	// (listings do not carry it); Head always fills it.
	Checksum uint32
}

// Target is an object store for sealed segments: a filesystem directory
// (FSTarget) or an S3-compatible bucket (S3Target). Keys are
// slash-separated relative paths (ValidKey). Every method is safe for
// concurrent use.
type Target interface {
	// Put stores the size bytes of body under key, once: it fails with
	// ErrExists when the key already holds an object, and never
	// overwrites. sum is the CRC-32C of the bytes: Put checks it over
	// what it read and the store checks it over what it received (when
	// it can), failing with ErrChecksum. After Put returns nil the object
	// is durable and Head sees it. After any other error the key may or
	// may not hold the object: retry under a new key and leave the old
	// one to a sweep.
	Put(ctx context.Context, key string, body io.ReaderAt, size int64, sum uint32) (ObjectInfo, error)
	// Head returns the object's size and checksum, or ErrNotFound.
	Head(ctx context.Context, key string) (ObjectInfo, error)
	// GetRange returns the n bytes at off (fewer only at the object's
	// end), or ErrNotFound. The caller closes the reader.
	GetRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error)
	// Delete removes the object. Deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// List calls fn for every object whose key starts with prefix, in
	// key order, until fn returns an error (List returns it).
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// String names the target for logs and errors (never a credential).
	String() string
}

// ValidKey checks that key can name an object in every target: not
// empty, relative, slash-separated elements that are neither empty, "."
// nor "..", and no backslash or NUL.
func ValidKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.ContainsAny(key, "\\\x00") {
		return fmt.Errorf("%w: %q", ErrInvalidKey, key)
	}
	for _, el := range strings.Split(key, "/") {
		if el == "" || el == "." || el == ".." {
			return fmt.Errorf("%w: %q", ErrInvalidKey, key)
		}
	}
	return nil
}

// checksumOf reads the size bytes of r and returns their CRC-32C.
func checksumOf(r io.ReaderAt, size int64) (uint32, error) {
	h := crc32.New(castagnoli)
	n, err := io.Copy(h, io.NewSectionReader(r, 0, size))
	if err != nil {
		return 0, err
	}
	if n != size {
		return 0, fmt.Errorf("tiering: body is %d bytes, not %d: %w", n, size, io.ErrUnexpectedEOF)
	}
	return h.Sum32(), nil
}
