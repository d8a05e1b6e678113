package tiering

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// metaChecksum is the user metadata (x-amz-meta-tsstore-crc32c) holding
// an object's CRC-32C as 8 lower-case hex digits. Frozen: objects
// written by one version are read by the next.
const metaChecksum = "tsstore-crc32c"

// S3Config is where an S3Target stores objects and how it signs in.
// Credentials come from AccessKeyID and SecretAccessKey when both are
// set, else from the standard AWS chain (environment, shared config and
// credentials files with Profile, web identity, container and instance
// roles). The secret is never logged: String leaves it out.
type S3Config struct {
	// Bucket holds the objects; it must exist.
	Bucket string
	// Prefix is put before every key; "" or a relative path (a missing
	// trailing "/" is added).
	Prefix string
	// Endpoint is the store's base URL (http://127.0.0.1:7070, or an
	// S3-compatible service); "" is AWS S3 itself.
	Endpoint string
	// Region signs the requests; S3-compatible stores mostly accept any.
	Region string
	// PathStyle addresses the bucket as endpoint/bucket/key instead of
	// bucket.endpoint/key (most S3-compatible stores need it).
	PathStyle bool
	// AccessKeyID and SecretAccessKey are static credentials; leave both
	// empty to use the standard chain.
	AccessKeyID     string
	SecretAccessKey string
	// Profile selects a profile of the shared config files ("": default).
	Profile string
	// RequestTimeout bounds each request (a ranged GET of a few MiB, a
	// segment's PUT); 0 is no bound beyond the caller's context.
	RequestTimeout time.Duration
}

// DefaultS3Config returns a configuration without a bucket: region
// us-east-1, virtual-hosted addressing, 5 minutes per request.
func DefaultS3Config() S3Config {
	return S3Config{Region: "us-east-1", RequestTimeout: 5 * time.Minute}
}

// Validate checks the configuration.
func (c S3Config) Validate() error {
	if c.Bucket == "" {
		return errors.New("tiering: s3: bucket is required")
	}
	if strings.HasPrefix(c.Prefix, "/") {
		return fmt.Errorf("tiering: s3: prefix %q must be relative", c.Prefix)
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("tiering: s3: endpoint %q is not an http(s) URL", c.Endpoint)
		}
	}
	if c.Region == "" {
		return errors.New("tiering: s3: region is required")
	}
	if (c.AccessKeyID == "") != (c.SecretAccessKey == "") {
		return errors.New("tiering: s3: set both the access key id and the secret access key, or neither")
	}
	if c.RequestTimeout < 0 {
		return fmt.Errorf("tiering: s3: request timeout %v is negative", c.RequestTimeout)
	}
	return nil
}

// String names the bucket and endpoint, never the credentials.
func (c S3Config) String() string {
	ep := c.Endpoint
	if ep == "" {
		ep = "aws"
	}
	return fmt.Sprintf("s3://%s/%s (%s)", c.Bucket, c.prefix(), ep)
}

func (c S3Config) prefix() string {
	if c.Prefix != "" && !strings.HasSuffix(c.Prefix, "/") {
		return c.Prefix + "/"
	}
	return c.Prefix
}

// S3Target stores objects in an S3-compatible bucket. Put sends
// If-None-Match: * (and heads the key first, for stores that ignore the
// condition), the CRC-32C in x-amz-checksum-crc32c for the store to check
// and in the tsstore-crc32c metadata for Head to return.
type S3Target struct {
	cfg    S3Config
	prefix string
	client *s3.Client
}

// NewS3Target returns a target for cfg. It does not contact the store.
func NewS3Target(ctx context.Context, cfg S3Config) (*S3Target, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := []func(*config.LoadOptions) error{config.WithRegion(cfg.Region)}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("tiering: s3: load AWS configuration: %w", err)
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		o.UsePathStyle = cfg.PathStyle
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		// Checksums are ours (CRC-32C, sent explicitly on Put); the
		// SDK's default trailers are not understood by every store.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	return &S3Target{cfg: cfg, prefix: cfg.prefix(), client: client}, nil
}

func (t *S3Target) String() string { return t.cfg.String() }

func (t *S3Target) objectKey(key string) (string, error) {
	if err := ValidKey(key); err != nil {
		return "", err
	}
	return t.prefix + key, nil
}

func (t *S3Target) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if t.cfg.RequestTimeout > 0 {
		return context.WithTimeout(ctx, t.cfg.RequestTimeout)
	}
	return context.WithCancel(ctx)
}

// Put implements Target.
func (t *S3Target) Put(ctx context.Context, key string, body io.ReaderAt, size int64, sum uint32) (ObjectInfo, error) {
	if err := ValidKey(key); err != nil {
		return ObjectInfo{}, err
	}
	// The store may not check x-amz-checksum-crc32c: check the local
	// bytes first, so a claim that does not match them is never sent.
	got, err := checksumOf(body, size)
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("tiering: put %s: %w", key, err)
	}
	if got != sum {
		return ObjectInfo{}, fmt.Errorf("%w: put %s: read %08x, expected %08x", ErrChecksum, key, got, sum)
	}
	switch _, err := t.Head(ctx, key); {
	case err == nil || errors.Is(err, ErrChecksum): // an object, ours or not
		return ObjectInfo{}, fmt.Errorf("%w: %s in %s", ErrExists, key, t)
	case !errors.Is(err, ErrNotFound):
		return ObjectInfo{}, err
	}
	if err := t.putObject(ctx, key, body, size, sum); err != nil {
		return ObjectInfo{}, err
	}
	return ObjectInfo{Key: key, Size: size, Checksum: sum}, nil
}

// putObject is Put's request: If-None-Match refuses an existing key even
// when two writers pass the head check at once.
func (t *S3Target) putObject(ctx context.Context, key string, body io.ReaderAt, size int64, sum uint32) error {
	ok, err := t.objectKey(key)
	if err != nil {
		return err
	}
	var crc [4]byte
	binary.BigEndian.PutUint32(crc[:], sum)
	rctx, cancel := t.reqCtx(ctx)
	defer cancel()
	_, err = t.client.PutObject(rctx, &s3.PutObjectInput{
		Bucket:            aws.String(t.cfg.Bucket),
		Key:               aws.String(ok),
		Body:              io.NewSectionReader(body, 0, size),
		ContentLength:     aws.Int64(size),
		IfNoneMatch:       aws.String("*"),
		ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
		ChecksumCRC32C:    aws.String(base64.StdEncoding.EncodeToString(crc[:])),
		Metadata:          map[string]string{metaChecksum: fmt.Sprintf("%08x", sum)},
	})
	if err != nil {
		switch status(err) {
		case http.StatusPreconditionFailed, http.StatusConflict:
			return fmt.Errorf("%w: %s in %s", ErrExists, key, t)
		case http.StatusBadRequest:
			if strings.Contains(err.Error(), "BadDigest") || strings.Contains(strings.ToLower(err.Error()), "checksum") {
				return fmt.Errorf("%w: put %s: %w", ErrChecksum, key, err)
			}
		}
		return fmt.Errorf("tiering: put %s to %s: %w", key, t, err)
	}
	return nil
}

// Head implements Target. The checksum is the one Put stored in the
// object's metadata; an object without it fails with ErrChecksum.
func (t *S3Target) Head(ctx context.Context, key string) (ObjectInfo, error) {
	ok, err := t.objectKey(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	rctx, cancel := t.reqCtx(ctx)
	defer cancel()
	out, err := t.client.HeadObject(rctx, &s3.HeadObjectInput{Bucket: aws.String(t.cfg.Bucket), Key: aws.String(ok)})
	if err != nil {
		if status(err) == http.StatusNotFound {
			return ObjectInfo{}, fmt.Errorf("%w: %s in %s", ErrNotFound, key, t)
		}
		return ObjectInfo{}, fmt.Errorf("tiering: head %s in %s: %w", key, t, err)
	}
	info := ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength)}
	v, found := out.Metadata[metaChecksum]
	sum, perr := strconv.ParseUint(v, 16, 32)
	if !found || perr != nil || len(v) != 8 {
		return info, fmt.Errorf("%w: %s in %s carries no %s metadata (%q)", ErrChecksum, key, t, metaChecksum, v)
	}
	info.Checksum = uint32(sum)
	return info, nil
}

// GetRange implements Target.
func (t *S3Target) GetRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	ok, err := t.objectKey(key)
	if err != nil {
		return nil, err
	}
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("tiering: get %s: bad range %d+%d", key, off, n)
	}
	if n == 0 {
		return io.NopCloser(strings.NewReader("")), nil
	}
	rctx, cancel := t.reqCtx(ctx)
	out, err := t.client.GetObject(rctx, &s3.GetObjectInput{
		Bucket: aws.String(t.cfg.Bucket),
		Key:    aws.String(ok),
		Range:  aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1)),
	})
	if err != nil {
		cancel()
		switch status(err) {
		case http.StatusNotFound:
			return nil, fmt.Errorf("%w: %s in %s", ErrNotFound, key, t)
		case http.StatusRequestedRangeNotSatisfiable:
			return io.NopCloser(strings.NewReader("")), nil // at or past the end, as a file reads
		}
		return nil, fmt.Errorf("tiering: get %s in %s: %w", key, t, err)
	}
	return &cancelBody{ReadCloser: out.Body, r: io.LimitReader(out.Body, n), cancel: cancel}, nil
}

// Delete implements Target.
func (t *S3Target) Delete(ctx context.Context, key string) error {
	ok, err := t.objectKey(key)
	if err != nil {
		return err
	}
	rctx, cancel := t.reqCtx(ctx)
	defer cancel()
	_, err = t.client.DeleteObject(rctx, &s3.DeleteObjectInput{Bucket: aws.String(t.cfg.Bucket), Key: aws.String(ok)})
	if err != nil && status(err) != http.StatusNotFound {
		return fmt.Errorf("tiering: delete %s in %s: %w", key, t, err)
	}
	return nil
}

// List implements Target.
func (t *S3Target) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	p := s3.NewListObjectsV2Paginator(t.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(t.cfg.Bucket),
		Prefix: aws.String(t.prefix + prefix),
	})
	for p.HasMorePages() {
		rctx, cancel := t.reqCtx(ctx)
		page, err := p.NextPage(rctx)
		cancel()
		if err != nil {
			return fmt.Errorf("tiering: list %q in %s: %w", prefix, t, err)
		}
		for _, o := range page.Contents {
			key, found := strings.CutPrefix(aws.ToString(o.Key), t.prefix)
			if !found {
				continue
			}
			if err := fn(ObjectInfo{Key: key, Size: aws.ToInt64(o.Size)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// status is the HTTP status of a failed request, or 0.
func status(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// cancelBody ends the request's context when the body is closed.
type cancelBody struct {
	io.ReadCloser
	r      io.Reader
	cancel context.CancelFunc
}

func (b *cancelBody) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}
