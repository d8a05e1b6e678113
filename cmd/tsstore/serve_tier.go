package main

import (
	"context"
	"errors"

	"github.com/spf13/pflag"

	"github.com/tsstore/tsstore/tiering"
)

// tierFlags are the settings of cold tiering (docs/operations.md, Cold
// tiering): where the target is (a directory or an S3 bucket) and the
// policy. S3 credentials come from the standard AWS chain (AWS_* variables,
// the shared config and credentials files with tier-s3-profile, roles);
// they are never flags, so they never show in a process listing or a log.
type tierFlags struct {
	dir string
	s3  tiering.S3Config
}

func (s *serveFlags) addTierFlags(fs *pflag.FlagSet) {
	s.tier.addTargetFlags(fs)
	c := &s.cfg.Tier
	fs.DurationVar(&c.After, "tier-after", 0, "tier sealed segments whose last event is at least this old (0: no age rule)")
	fs.Int64Var(&c.HotBytes, "tier-hot-bytes", 0, "tier the oldest sealed segments while those not tiered add up to more than this, bytes (0: no budget rule)")
	fs.DurationVar(&c.Interval, "tier-interval", c.Interval, "how often the leader looks for segments to tier")
	fs.DurationVar(&c.MaxBackoff, "tier-max-backoff", c.MaxBackoff, "longest wait between tiering attempts while the store fails")
	fs.DurationVar(&c.SweepInterval, "tier-sweep-interval", c.SweepInterval, "how often the leader deletes objects earlier leaders uploaded and never committed")
	fs.DurationVar(&c.DeleteDelay, "tier-delete-delay", c.DeleteDelay, "how long the leader keeps the object of a tiered segment retention dropped before deleting it (reads in flight finish; objects a stored snapshot references wait for it)")
	fs.Int64Var(&c.Cache.CapBytes, "tier-cache-bytes", c.Cache.CapBytes, "memory for blocks of tiered segments read back from the tier target, bytes (LRU, 4 MiB blocks)")
}

// addTargetFlags adds the flags that say where the tier target is.
func (t *tierFlags) addTargetFlags(fs *pflag.FlagSet) {
	t.s3 = tiering.DefaultS3Config()
	fs.StringVar(&t.dir, "tier-dir", "", "cold tiering to this directory (an NFS mount or another disk; off when neither tier-dir nor tier-s3-bucket is set)")
	fs.StringVar(&t.s3.Bucket, "tier-s3-bucket", "", "cold tiering to this S3 bucket (credentials from the standard AWS chain)")
	fs.StringVar(&t.s3.Prefix, "tier-s3-prefix", "", "key prefix in the tier bucket")
	fs.StringVar(&t.s3.Endpoint, "tier-s3-endpoint", "", "S3-compatible endpoint URL (empty: AWS S3)")
	fs.StringVar(&t.s3.Region, "tier-s3-region", t.s3.Region, "region the tier requests are signed for")
	fs.BoolVar(&t.s3.PathStyle, "tier-s3-path-style", false, "address the tier bucket as endpoint/bucket (most S3-compatible stores)")
	fs.StringVar(&t.s3.Profile, "tier-s3-profile", "", "profile of the shared AWS config files for the tier credentials")
	fs.DurationVar(&t.s3.RequestTimeout, "tier-s3-request-timeout", t.s3.RequestTimeout, "bound on one tier request (a segment's upload)")
}

// target opens the tier target the flags name (nil when neither a
// directory nor a bucket is set).
func (t *tierFlags) target() (tiering.Target, error) {
	switch {
	case t.dir != "" && t.s3.Bucket != "":
		return nil, errors.New("tier-dir and tier-s3-bucket: set one tier target, not both")
	case t.dir != "":
		return tiering.NewFSTarget(t.dir)
	case t.s3.Bucket != "":
		return tiering.NewS3Target(context.Background(), t.s3)
	}
	return nil, nil
}

// tierTarget sets the tier target from the flags (nil when neither a
// directory nor a bucket is set).
func (s *serveFlags) tierTarget() error {
	target, err := s.tier.target()
	if err != nil || target == nil {
		return err
	}
	s.cfg.Tier.Target = target
	return nil
}
