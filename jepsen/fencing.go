package jepsen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
)

// The fencing workload (scenario "fencing"): training runs whose job
// attempts keep being replaced while the replaced attempt's writer goes on
// appending, a zombie.
//
// Per run, an orchestrator calls StartRun (a new generation through Raft)
// every fenceEvery, recording each call as a FenceOp, and starts a writer
// with the generation it got. The writer of the attempt it replaced is
// not told: it keeps appending with its old generation for zombieFor more,
// and each of those appends must fail FENCED and write nothing. Writers
// append through an SDK Producer of their own (idempotent, retried like
// the main workload's appenders), to the run's stream, 1-3 events an
// append, each payload naming the run, the writer, its generation and the
// writer's own sequence (runValue), so the checker (rule 10, fencecheck.go)
// knows every stored event's generation.

// fencedRuns is how many runs the workload fences and writes.
const fencedRuns = 3

var (
	// fenceEvery is the range of the pause between two StartRuns of a run.
	fenceEvery = [2]time.Duration{400 * time.Millisecond, 1500 * time.Millisecond}
	// zombieFor is how long a replaced writer keeps appending after the
	// StartRun that replaced it returned.
	zombieFor = [2]time.Duration{500 * time.Millisecond, 3 * time.Second}
)

const (
	// startRunTimeout bounds one StartRun, the SDK's retries included.
	startRunTimeout = 10 * time.Second
	// fencedPause is a writer's pause after a FENCED refusal (zombies
	// would otherwise spin on definite errors).
	fencedPause = 20 * time.Millisecond
)

// runName is the stream of the workload's run i.
func runName(i int) string { return fmt.Sprintf("jepsen/run%d", i) }

// runValue is the payload of one event of a run's writer: the run, the
// writer, the generation it appends with and its own sequence.
func runValue(run string, writer int, gen, seq uint64) string {
	return fmt.Sprintf("%s w%d g%d s%d", run, writer, gen, seq)
}

// parseRunValue reverses runValue; ok is false for any other value.
func parseRunValue(v string) (run string, writer int, gen, seq uint64, ok bool) {
	f := strings.Fields(v)
	if len(f) != 4 {
		return "", 0, 0, 0, false
	}
	w, err1 := strconv.Atoi(strings.TrimPrefix(f[1], "w"))
	g, err2 := strconv.ParseUint(strings.TrimPrefix(f[2], "g"), 10, 64)
	s, err3 := strconv.ParseUint(strings.TrimPrefix(f[3], "s"), 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || runValue(f[0], w, g, s) != v {
		return "", 0, 0, 0, false
	}
	return f[0], w, g, s, true
}

// fenceValue is how a "$fence" record of stream appears among the values
// (recordValue): NUL, "fence", the stream, the generation and the reason,
// decoded with client/train's decoder of the frozen payload (a msgpack
// array [generation, reason]).
func fenceValue(stream string, payload []byte) string {
	gen, reason, err := train.DecodeFence(payload)
	if err != nil {
		return fmt.Sprintf("\x00fence %s undecodable %x", stream, payload)
	}
	return fmt.Sprintf("\x00fence %s g%d %s", stream, gen, reason)
}

// parseFenceValue reverses fenceValue. isFence says v is a fence record;
// ok that its payload decoded.
func parseFenceValue(v string) (stream string, gen uint64, reason string, isFence, ok bool) {
	rest, isFence := strings.CutPrefix(v, "\x00fence ")
	if !isFence {
		return "", 0, "", false, false
	}
	f := strings.SplitN(rest, " ", 3)
	if len(f) != 3 {
		return "", 0, "", true, false
	}
	g, err := strconv.ParseUint(strings.TrimPrefix(f[1], "g"), 10, 64)
	if err != nil || !strings.HasPrefix(f[1], "g") {
		return f[0], 0, "", true, false
	}
	return f[0], g, f[2], true, true
}

// between draws a duration in r.
func between(rng *rand.Rand, r [2]time.Duration) time.Duration {
	return r[0] + time.Duration(rng.Int64N(int64(r[1]-r[0])+1))
}

// runWriter is one job attempt's writer.
type runWriter struct {
	run string
	id  int // the orchestrator's StartRun op that gave it its generation
	gen uint64
	// retireAt is the run time at which it stops appending; 0 while it is
	// the run's live writer.
	retireAt atomic.Int64
}

func (wr *runWriter) retired(now time.Duration) bool {
	r := wr.retireAt.Load()
	return r != 0 && now >= time.Duration(r)
}

// orchestrator fences run i again and again: each StartRun that returns a
// generation starts a new writer with it and retires the previous writer
// zombieFor later.
func (w *workload) orchestrator(ctx, stop context.Context, i int) {
	run := runName(i)
	proc := fmt.Sprintf("orch%d", i)
	rng := rand.New(rand.NewPCG(w.seed, uint64(300+i)))
	cl, err := client.New(w.clientConfig())
	if err != nil {
		w.rec.fence(FenceOp{Process: proc, Run: run, Outcome: Fail, Err: err.Error()})
		return
	}
	defer cl.Close()
	var live *runWriter
	for k := 1; stop.Err() == nil; k++ {
		op := FenceOp{Process: proc, Run: run, Reason: fmt.Sprintf("%s attempt %d", proc, k), Invoke: w.rec.now()}
		sctx, cancel := context.WithTimeout(ctx, startRunTimeout)
		gen, err := cl.StartRun(sctx, run, op.Reason)
		cancel()
		op.Complete = w.rec.now()
		switch {
		case err == nil:
			op.Outcome, op.Generation = OK, gen
		case client.MayHaveCommitted(err):
			op.Outcome, op.Err = Unknown, err.Error()
		default:
			op.Outcome, op.Err = Fail, err.Error()
		}
		w.rec.fence(op)
		if op.Outcome != OK {
			sleepCtx(stop, 100*time.Millisecond)
			continue
		}
		if live != nil {
			live.retireAt.Store(int64(w.rec.now() + between(rng, zombieFor)))
		}
		wr := &runWriter{run: run, id: k, gen: gen}
		w.goFunc(func() { w.runWriterLoop(ctx, stop, wr) })
		live = wr
		sleepCtx(stop, between(rng, fenceEvery))
	}
}

// runWriterLoop appends wr's events until it is retired or the workload
// stops, on a client and producer of its own.
func (w *workload) runWriterLoop(ctx, stop context.Context, wr *runWriter) {
	proc := fmt.Sprintf("%s-w%d", wr.run, wr.id)
	rng := rand.New(rand.NewPCG(scenarioSeed(w.seed, proc), 4))
	cl, err := client.New(w.clientConfig())
	if err != nil {
		return
	}
	defer cl.Close()
	prod := cl.NewProducer(proc + "-" + w.runID)
	prod.SetRunGeneration(wr.gen)
	for seq := uint64(0); stop.Err() == nil && !wr.retired(w.rec.now()); {
		k := 1
		if rng.IntN(4) == 0 {
			k = 2 + rng.IntN(2)
		}
		op := AppendOp{Process: proc, Idempotent: true, Run: wr.run, Generation: wr.gen, Invoke: w.rec.now()}
		evs := make([]client.Event, k)
		for j := range evs {
			v := runValue(wr.run, wr.id, wr.gen, seq)
			seq++
			op.Values = append(op.Values, v)
			evs[j] = client.Event{Stream: wr.run, Type: "Appended", Payload: []byte(v)}
		}
		w.producerAppend(ctx, prod, &op, evs)
		pause := thinkTime
		switch {
		case op.Outcome == OK:
			w.noteAck(op.Last())
		case op.Fenced:
			pause = fencedPause
		}
		sleepCtx(stop, pause)
	}
}
