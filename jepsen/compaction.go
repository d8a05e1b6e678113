package jepsen

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
	"github.com/tsstore/tsstore/internal/proccluster"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// The compaction workload (scenario "compaction", issue #14's jepsen
// must-show for run compaction and stream deletion). On top of the usual
// workload, whose streams no compaction covers:
//
//   - trainers write training runs with typed events through the SDK
//     (client.TrainEvent and an idempotent Producer, one event per
//     append): TrainingStarted, BatchCompleted per step, CheckpointSaved
//     every 10 steps, now and then NodeFailed and GradientSync, and most
//     runs end with TrainingFinished or TrainingAborted (some are left
//     unfinished). The nodes write a run snapshot every few BatchCompleted
//     (--run-snapshot-batches), and run compaction (--run-compaction,
//     --retention-interval) rewrites the sealed segments of finished runs
//     down to the kept types up to their latest snapshot's coverage. After
//     a run's finishing event is acknowledged its trainer reads the run
//     state (client.RunState) and records its hash;
//   - a deleter writes short streams and deletes most of them
//     (Retention.DeleteStream through any node), after which the leader
//     rewrites the sealed segments that hold them;
//   - a watcher polls every node's segment manifest and records each
//     change of a sealed segment's digest: a rewrite the node committed.
//
// The final phase waits until the leader plans no more rewrites and every
// node's segments read what its manifest says, then asks each node for
// the run states, reads of each finished run's stream (from 0: refused
// OFFSET_COMPACTED if it was thinned; with the kept types: whole) and of
// each deleted stream (NOT_FOUND), and the digests of its segments. Rule
// 13 (compcheck.go) judges it all.

// CompactionSpec is a scenario's compaction workload.
type CompactionSpec struct {
	RunPrefix string // prefix of the trainers' run streams
	DelPrefix string // prefix of the deleter's streams
	Trainers  int
	// Keep are the types run compaction keeps: the server's default kept
	// types (docs/operations.md, Run compaction), which the scenario does
	// not change.
	Keep []string
}

// CompactionRun is what the compaction workload did (History).
type CompactionRun struct {
	Keep     []string     `json:"kept_types"`
	Runs     []TrainRun   `json:"runs"`
	Deletes  []DeleteOp   `json:"deletes"`
	Rewrites []RewriteObs `json:"rewrites"`
}

func (c *CompactionRun) clone() *CompactionRun {
	if c == nil {
		return nil
	}
	return &CompactionRun{Keep: c.Keep, Runs: slices.Clone(c.Runs), Deletes: slices.Clone(c.Deletes), Rewrites: slices.Clone(c.Rewrites)}
}

// TrainRun is one training run a trainer wrote.
type TrainRun struct {
	Stream  string `json:"stream"`
	Process string `json:"process"`
	// Finish is the type of its acknowledged finishing event ("": the run
	// was left unfinished, or its finishing event was not acknowledged).
	Finish     string        `json:"finish,omitempty"`
	FinishedAt time.Duration `json:"finished_ns,omitempty"`
	// Ending is the type of the finishing event it tried to append
	// ("": none); with Finish "", that append's outcome was not OK, and
	// if it was unknown the run may be finished all the same.
	Ending string `json:"ending,omitempty"`
	// StateHash is the run state's hash (client.RunState) read right
	// after the finish was acknowledged; StateErr why it could not be.
	StateHash string `json:"state_hash,omitempty"`
	StateErr  string `json:"state_error,omitempty"`
	// StartErr: StartRun did not succeed, so nothing was written.
	StartErr string `json:"start_error,omitempty"`
}

// DeleteOp is one Retention.DeleteStream of a deleter's stream, invoked
// after every append to the stream ended. Upto (with OK) is the last
// offset the delete covers.
type DeleteOp struct {
	Stream   string        `json:"stream"`
	Invoke   time.Duration `json:"invoke_ns"`
	Complete time.Duration `json:"complete_ns"`
	Outcome  Outcome       `json:"outcome"`
	Upto     uint64        `json:"upto,omitempty"`
	Attempts int           `json:"attempts"`
	Err      string        `json:"error,omitempty"`
}

// RewriteObs is a sealed segment whose digest a node's manifest changed:
// a committed rewrite.
type RewriteObs struct {
	At     time.Duration `json:"at_ns"`
	Node   string        `json:"node"`
	Base   uint64        `json:"base_offset"`
	Size   uint64        `json:"size"`
	Digest uint32        `json:"digest"`
}

// ReplicaCompaction is what one node answered about the workload's runs
// and deleted streams at the end.
type ReplicaCompaction struct {
	Runs    map[string]RunProbe `json:"runs"`
	Deleted map[string]string   `json:"deleted_reads,omitempty"` // stream -> "not found" or what the read did
	Err     string              `json:"error,omitempty"`
}

// RunProbe is one node's view of a finished run at the end.
type RunProbe struct {
	StateHash string `json:"state_hash,omitempty"`
	StateErr  string `json:"state_error,omitempty"`
	Covers    uint64 `json:"covers,omitempty"` // the newest snapshot's coverage (0: none)
	// Compacted and FirstKept: a read of the stream from 0 was refused
	// OFFSET_COMPACTED naming FirstKept; ReadErr any other error.
	Compacted bool   `json:"compacted,omitempty"`
	FirstKept uint64 `json:"first_kept,omitempty"`
	ReadErr   string `json:"read_error,omitempty"`
	// Kept are the offsets a read of the stream from 0 with the kept
	// types returned; KeptErr its error.
	Kept    []uint64 `json:"kept"`
	KeptErr string   `json:"kept_error,omitempty"`
}

func (r *recorder) compaction(f func(*CompactionRun)) {
	r.mu.Lock()
	if r.h.Compaction != nil {
		f(r.h.Compaction)
	}
	r.mu.Unlock()
}

// trainer writes training runs until stop, one event per append.
func (w *workload) trainer(ctx, stop context.Context, i int) {
	spec := w.compaction
	proc := fmt.Sprintf("trn%d", i)
	rng := rand.New(rand.NewPCG(w.seed, uint64(300+i)))
	cl, err := client.New(w.clientConfig())
	if err != nil {
		return
	}
	defer cl.Close()
	prod := cl.NewProducer(proc + "-" + w.runID)
	for run := 0; stop.Err() == nil; run++ {
		stream := fmt.Sprintf("%s%s-r%d", spec.RunPrefix, proc, run)
		tr := TrainRun{Stream: stream, Process: proc}
		// A stream is a run once fenced: StartRun writes its "$fence"
		// (generation 1), and the run's appends carry that generation.
		gen, err := startRun(ctx, stop, cl, stream)
		if err != nil {
			tr.StartErr = err.Error()
			w.rec.compaction(func(c *CompactionRun) { c.Runs = append(c.Runs, tr) })
			continue
		}
		prod.SetRunGeneration(gen)
		evs := trainingRun(rng, stream)
		for _, ev := range evs {
			if stop.Err() != nil {
				break
			}
			out := w.trainAppend(ctx, prod, proc, stream, ev)
			if typ := ev.EventType(); typ == "TrainingFinished" || typ == "TrainingAborted" {
				tr.Ending = typ
				if out == OK {
					tr.Finish, tr.FinishedAt = typ, w.rec.now()
				} else if out == Fail {
					tr.Ending = "" // definitely not written
				}
			}
			sleepCtx(stop, thinkTime)
		}
		if tr.Finish != "" {
			tr.StateHash, _, tr.StateErr = runState(ctx, cl, stream, 10*time.Second)
		}
		w.rec.compaction(func(c *CompactionRun) { c.Runs = append(c.Runs, tr) })
	}
}

// startRun fences stream (StartRun, idempotent in the SDK), retrying for
// up to 15 s, and returns the generation.
func startRun(ctx, stop context.Context, cl *client.Client, stream string) (uint64, error) {
	deadline := time.Now().Add(giveUpAfter)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		gen, err := cl.StartRun(cctx, stream, "jepsen trainer")
		cancel()
		if err == nil {
			return gen, nil
		}
		if time.Now().After(deadline) || stop.Err() != nil {
			return 0, err
		}
		sleepCtx(stop, 200*time.Millisecond)
	}
}

// trainingRun returns one run's events: started, 20-50 steps of one
// BatchCompleted each, a CheckpointSaved of both ranks every 10 steps,
// now and then a GradientSync or a NodeFailed, then (80%) finished, (10%)
// aborted or (10%) nothing: left unfinished.
func trainingRun(rng *rand.Rand, stream string) []train.Event {
	evs := []train.Event{train.TrainingStarted{Model: "jepsen", ConfigHash: stream, WorldSize: 2,
		Hyperparameters: train.Params{"lr": 0.01}}}
	steps := uint64(20 + rng.IntN(31))
	for s := uint64(1); s <= steps; s++ {
		evs = append(evs, train.BatchCompleted{Rank: 0, Batch: s, Step: s, Loss: 1 / float64(s), LearningRate: 0.01, Samples: 32})
		if rng.IntN(8) == 0 {
			evs = append(evs, train.GradientSync{Step: s, Ranks: 2, Bytes: 1 << 20, Micros: uint64(100 + rng.IntN(900))})
		}
		if rng.IntN(40) == 0 {
			evs = append(evs, train.NodeFailed{Rank: 1, Host: "h1", Reason: fmt.Sprintf("step %d", s)})
		}
		if s%10 == 0 {
			for rank := range 2 {
				evs = append(evs, train.CheckpointSaved{Step: s, Rank: rank, URI: fmt.Sprintf("s3://ckpt/%s/%d/%d", stream, s, rank),
					Size: 1 << 20, SHA256: fmt.Sprintf("%064x", s*2+uint64(rank))})
			}
		}
	}
	switch k := rng.IntN(10); {
	case k < 8:
		evs = append(evs, train.TrainingFinished{Step: steps, Reason: "done"})
	case k < 9:
		evs = append(evs, train.TrainingAborted{Step: steps, Reason: "diverged"})
	}
	return evs
}

// trainAppend appends one typed event, records it and returns its
// outcome.
func (w *workload) trainAppend(ctx context.Context, prod *client.Producer, proc, stream string, ev train.Event) Outcome {
	e, err := client.TrainEvent(stream, ev)
	if err != nil {
		panic(fmt.Sprintf("jepsen: a built-in training event does not encode: %v", err))
	}
	op := AppendOp{Process: proc, Idempotent: true, Values: []string{typedValue(stream, e.Type, e.Payload)},
		Invoke: w.rec.now(), Stream: stream, Type: e.Type}
	w.producerAppend(ctx, prod, &op, []client.Event{e})
	if op.Outcome == OK {
		w.noteAck(op.Last())
	}
	return op.Outcome
}

// runState reads the run's state (snapshot and tail), retrying for up to
// patience, and returns its hash in hex and the coverage of the snapshot
// it started from (0: none), or the last error.
func runState(ctx context.Context, cl *client.Client, stream string, patience time.Duration, opts ...client.ReadOption) (hash string, covers uint64, errText string) {
	var last error
	for deadline := time.Now().Add(patience); ; {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, info, err := cl.RunState(cctx, stream, train.Target{}, opts...)
		cancel()
		if err == nil {
			if info.Snapshot != nil {
				covers = info.Snapshot.Covers
			}
			return hex.EncodeToString(st.Hash[:]), covers, ""
		}
		last = err
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", 0, last.Error()
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

// deleter writes streams of 20-60 events and deletes two of three once
// their appends ended.
func (w *workload) deleter(ctx, stop context.Context) {
	spec := w.compaction
	const proc = "del0"
	rng := rand.New(rand.NewPCG(w.seed, 400))
	cl, err := client.New(w.clientConfig())
	if err != nil {
		return
	}
	defer cl.Close()
	prod := cl.NewProducer(proc + "-" + w.runID)
	for k := 0; stop.Err() == nil; k++ {
		stream := fmt.Sprintf("%s%s-s%d", spec.DelPrefix, proc, k)
		n := 20 + rng.IntN(41)
		for j := 0; j < n && stop.Err() == nil; j++ {
			v := fmt.Sprintf("%s-s%d-%d", proc, k, j)
			op := AppendOp{Process: proc, Idempotent: true, Values: []string{v}, Invoke: w.rec.now(), Stream: stream}
			w.producerAppend(ctx, prod, &op, []client.Event{{Stream: stream, Type: "Appended", Payload: []byte(v)}})
			if op.Outcome == OK {
				w.noteAck(op.Last())
			}
			sleepCtx(stop, 10*time.Millisecond)
		}
		if stop.Err() != nil || rng.IntN(3) == 0 {
			continue
		}
		d := w.deleteStream(ctx, rng, stream)
		w.rec.compaction(func(c *CompactionRun) { c.Deletes = append(c.Deletes, d) })
	}
}

// deleteStream deletes stream through a random node (forwarded to the
// leader), retrying an unknown outcome for up to 15 s: a second delete of
// a stream nobody writes any more marks the same offsets.
func (w *workload) deleteStream(ctx context.Context, rng *rand.Rand, stream string) DeleteOp {
	d := DeleteOp{Stream: stream, Invoke: w.rec.now()}
	for {
		n := w.c.nodes[rng.IntN(len(w.c.nodes))]
		d.Attempts++
		err := withConn(n, func(conn *grpc.ClientConn) error {
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			resp, err := pb.NewRetentionClient(conn).DeleteStream(cctx, &pb.DeleteStreamRequest{Stream: stream})
			if err == nil {
				d.Upto = resp.UptoOffset
			}
			return err
		})
		if err == nil {
			d.Outcome, d.Err = OK, ""
			break
		}
		d.Err = err.Error()
		switch status.Code(err) {
		case codes.InvalidArgument, codes.NotFound:
			// Definite, but a retry's NotFound says nothing of an earlier
			// attempt: only the first attempt's refusal is a failure.
			d.Outcome = rawDefinite(d.Attempts)
		default:
			d.Outcome = Unknown
			if ctx.Err() == nil && w.rec.now()-d.Invoke < giveUpAfter {
				sleepCtx(ctx, 200*time.Millisecond)
				continue
			}
		}
		break
	}
	d.Complete = w.rec.now()
	return d
}

// rewriteWatcher polls every node's segment manifest and records each
// sealed segment whose digest changed since the node last reported it.
func (w *workload) rewriteWatcher(stop context.Context) {
	last := map[string]map[uint64]uint32{}
	for stop.Err() == nil {
		for _, n := range w.c.nodes {
			if !n.Running() {
				continue
			}
			_ = withConn(n, func(conn *grpc.ClientConn) error {
				ctx, cancel := context.WithTimeout(stop, time.Second)
				defer cancel()
				lr, err := pb.NewRetentionClient(conn).ListRetention(ctx, &pb.ListRetentionRequest{})
				if err != nil {
					return err
				}
				seen := last[n.ID]
				if seen == nil {
					seen = map[uint64]uint32{}
					last[n.ID] = seen
				}
				for _, s := range lr.Segments {
					if s.State != "local" {
						continue
					}
					if d, ok := seen[s.BaseOffset]; ok && d != s.Digest {
						o := RewriteObs{At: w.rec.now(), Node: n.ID, Base: s.BaseOffset, Size: s.SizeBytes, Digest: s.Digest}
						w.rec.compaction(func(c *CompactionRun) { c.Rewrites = append(c.Rewrites, o) })
					}
					seen[s.BaseOffset] = s.Digest
				}
				return nil
			})
		}
		sleepCtx(stop, 300*time.Millisecond)
	}
}

// settleCompaction waits, for up to 30 s, until the leader plans no
// rewrite (Compact dry run) and every node's sealed segments read the
// digests its manifest records, twice in a row: the replicas are then
// read without a rewrite landing between two of them.
func settleCompaction(ctx context.Context, c *cluster) error {
	deadline := time.Now().Add(30 * time.Second)
	quiet := 0
	var why string
	for {
		why = ""
		err := withConn(c.nodes[0], func(conn *grpc.ClientConn) error {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			resp, err := pb.NewRetentionClient(conn).Compact(cctx, &pb.CompactRequest{DryRun: true})
			if err == nil && len(resp.Rewrites) > 0 {
				why = fmt.Sprintf("the leader still plans %d rewrites", len(resp.Rewrites))
			}
			return err
		})
		if err != nil {
			why = fmt.Sprintf("compact dry run: %v", err)
		}
		for _, n := range c.nodes {
			if why != "" {
				break
			}
			_ = withConn(n, func(conn *grpc.ClientConn) error {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				dr, err := pb.NewRetentionClient(conn).SegmentDigests(cctx, &pb.SegmentDigestsRequest{})
				if err != nil {
					why = fmt.Sprintf("%s: SegmentDigests: %v", n.ID, err)
					return nil
				}
				for _, s := range dr.Segments {
					if s.Error == "" && s.Digest != s.ManifestDigest {
						why = fmt.Sprintf("%s: segment %d not rewritten yet", n.ID, s.BaseOffset)
						return nil
					}
				}
				return nil
			})
		}
		if why == "" {
			if quiet++; quiet == 2 {
				return nil
			}
		} else {
			quiet = 0
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("final phase: compaction did not settle within 30s: %s", why)
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
}

// nodeCompaction asks one node, with local reads, for the state of every
// finished run, reads each run's stream from 0 with and without the kept
// types, and reads every deleted stream.
func nodeCompaction(ctx context.Context, n *proccluster.Node, comp *CompactionRun) *ReplicaCompaction {
	rc := &ReplicaCompaction{Runs: map[string]RunProbe{}, Deleted: map[string]string{}}
	cfg := client.DefaultConfig(n.APIAddr)
	cfg.RequestTimeout = 5 * time.Second
	cl, err := client.New(cfg)
	if err != nil {
		rc.Err = err.Error()
		return rc
	}
	defer cl.Close()
	for _, tr := range comp.Runs {
		if tr.Ending == "" {
			continue
		}
		var p RunProbe
		// The newest snapshot's coverage comes with the state: RunState
		// starts from the newest snapshot (a lookup on this node).
		p.StateHash, p.Covers, p.StateErr = runState(ctx, cl, tr.Stream, time.Second, client.Local())
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		for _, err := range cl.ReadBatches(rctx, 0, client.Stream(tr.Stream), client.Local()) {
			if err != nil {
				p.FirstKept, p.Compacted = offsetCompacted(err)
				if !p.Compacted {
					p.ReadErr = err.Error()
				}
			}
			break
		}
		p.Kept = []uint64{}
		for ev, err := range cl.Replay(rctx, 0, client.Stream(tr.Stream), client.EventTypes(comp.Keep...), client.Local()) {
			if err != nil {
				p.KeptErr = err.Error()
				break
			}
			p.Kept = append(p.Kept, ev.Offset)
		}
		cancel()
		rc.Runs[tr.Stream] = p
	}
	for _, d := range comp.Deletes {
		if d.Outcome != OK {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		got := 0
		res := ""
		for _, err := range cl.Replay(rctx, 0, client.Stream(d.Stream), client.Local()) {
			if errors.Is(err, client.ErrStreamNotFound) {
				res = "not found"
				break
			}
			if err != nil {
				res = err.Error()
				break
			}
			got++
		}
		cancel()
		if res == "" {
			res = fmt.Sprintf("read %d events", got)
		}
		rc.Deleted[d.Stream] = res
	}
	return rc
}
