// Package bench is the measurement library under `tsstore bench`: latency
// histograms, throughput timelines, closed-loop workload runners, the JSON
// report shared with the peer benchmarks (bench/peers), the result table,
// terminal progress and plots.
//
// It knows nothing of tsstore: a workload is a function that appends and
// reports how many events it acknowledged, so the same runner drives
// tsstore, NATS JetStream or etcd and their figures are comparable.
//
// Invariants: a Histogram's quantiles are within 1% of the recorded values
// (log-linear buckets, 128 per power of two); a Timeline counts every
// acknowledged event in exactly one bucket, by acknowledgement time; the
// report's JSON shape (Report, Result) is a contract with bench/peers and
// changes only by adding optional fields.
package bench
