package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// `tsstore run verify RUN`, the silent-divergence detector. Replicas hold
// the same log byte for byte, and the run snapshots are the leader's fold
// of it; verify checks both from the outside, the way a trainer would see
// them:
//
//   - every node folds the run from its first event, reading only what
//     that node holds (Local reads from a client pinned to it), to the
//     same point: the run's last offset when verify started. The folds'
//     hash chains, event counts and last offsets must be equal;
//   - every indexed snapshot of the run (of this client's fold version)
//     must equal the fold from zero at the offset it covers: the same hash
//     and the same state, byte for byte.
//
// A fold that disagrees with the majority names its node; a snapshot
// that disagrees names its number. Exit 1 on any difference or error.

func newRunVerifyCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "verify RUN", Short: "fold the run from zero on every node and check its snapshots (exit 1 on a difference)", Args: exactArgs("RUN")}
	fs := cmd.Flags()
	cf.registerTimeout(fs, 10*time.Minute)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		stdout := cmd.OutOrStdout()
		run := args[0]
		var err error
		cfg, err := cf.config()
		if err != nil {
			return err
		}
		cl, ctx, cancel, err := cf.connect()
		if err != nil {
			return err
		}
		defer cancel()
		defer cl.Close()
		rep, err := verifyRun(ctx, cl, cfg, run)
		if err != nil {
			return runError(run, err)
		}
		if cf.json {
			if err := printIndentJSON(stdout, rep); err != nil {
				return err
			}
		} else {
			printRunVerify(stdout, rep)
		}
		if !rep.Agree {
			more := ""
			if len(rep.Problems) > 1 {
				more = fmt.Sprintf(" (and %d more problems)", len(rep.Problems)-1)
			}
			return exitError{1, fmt.Errorf("run %q does not verify: %s%s", run, rep.Problems[0], more)}
		}
		return nil
	}
	return cmd
}

// verifyReport is verify's result; with --json it is printed as is.
type verifyReport struct {
	Run string `json:"run"`
	// TargetOffset: every node folds the run's events up to this offset.
	TargetOffset uint64           `json:"target_offset"`
	Nodes        []nodeVerifyJSON `json:"nodes"`
	Snapshots    []snapVerifyJSON `json:"snapshots"`
	Agree        bool             `json:"agree"`
	Problems     []string         `json:"problems"`
}

type nodeVerifyJSON struct {
	ID         string `json:"id"`
	APIAddress string `json:"api_address"`
	Hash       string `json:"hash"`
	Events     uint64 `json:"events"`
	LastOffset uint64 `json:"last_offset"`
	Skipped    uint64 `json:"skipped"`
	// Agrees: the node's fold is the majority's.
	Agrees bool   `json:"agrees"`
	Error  string `json:"error"`
}

type snapVerifyJSON struct {
	Seq    uint64 `json:"seq"`
	Offset uint64 `json:"offset"`
	Covers uint64 `json:"covers"`
	Step   uint64 `json:"step"`
	Hash   string `json:"hash"`
	// Result: "equal", "differs", "error" or "skipped".
	Result string `json:"result"`
	Detail string `json:"detail"`
}

// nodeFold is one node's fold of the run from zero.
type nodeFold struct {
	ID, Addr string
	State    *train.State
	At       map[uint64]foldPoint // the fold at each snapshot's covers offset
	Err      error
}

type foldPoint struct {
	hash  [32]byte
	state []byte // MarshalBinary
}

// snapCheck is one indexed snapshot, as the cluster serves it.
type snapCheck struct {
	ref   *pb.RunSnapshotRef
	hash  [32]byte
	state []byte // MarshalBinary of the served state
	err   error  // reading it failed: a problem
	skip  string // not comparable: why
}

// verifyRun folds run on every node and reads its snapshots; cfg is the
// client configuration the per-node clients are made from.
func verifyRun(ctx context.Context, cl *client.Client, cfg client.Config, run string) (verifyReport, error) {
	info, err := cl.RunInfo(ctx, run)
	if err != nil {
		return verifyReport{}, err
	}
	st, err := cl.Status(ctx)
	if err != nil {
		return verifyReport{}, err
	}
	snaps, at, err := readSnapshots(ctx, cl, run, info)
	if err != nil {
		return verifyReport{}, err
	}
	nodes := slices.Clone(st.Nodes)
	slices.SortFunc(nodes, func(a, b *pb.NodeStatus) int { return strings.Compare(a.Id, b.Id) })
	folds := make([]nodeFold, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		folds[i] = nodeFold{ID: n.Id, Addr: n.ApiAddress}
		if n.ApiAddress == "" {
			folds[i].Err = errors.New("its API address is unknown (the node has not registered)")
			continue
		}
		wg.Go(func() { foldOnNode(ctx, cfg, &folds[i], run, info.LastOffset, at) })
	}
	wg.Wait()
	return judge(run, info.LastOffset, folds, snaps), nil
}

// readSnapshots reads every indexed snapshot of the run through the
// index lookup a resume uses, and returns the offsets they cover.
func readSnapshots(ctx context.Context, cl *client.Client, run string, info *pb.RunInfo) ([]snapCheck, map[uint64]bool, error) {
	var snaps []snapCheck
	at := map[uint64]bool{}
	for _, ref := range info.Snapshots {
		sc := snapCheck{ref: ref}
		if ref.FoldVersion != train.FoldVersion {
			sc.skip = fmt.Sprintf("fold version %d; this client folds version %d", ref.FoldVersion, train.FoldVersion)
			snaps = append(snaps, sc)
			continue
		}
		snap, ok, err := cl.RunSnapshotAt(ctx, run, train.AtOffset(ref.Covers))
		switch {
		case err != nil && !errors.Is(err, client.ErrCorruption):
			return nil, nil, err
		case err != nil:
			sc.err = err
		case !ok || snap.Offset != ref.Offset:
			// Retention may have dropped it since RunInfo.
			now, err := cl.RunInfo(ctx, run)
			if err != nil {
				return nil, nil, err
			}
			if !slices.ContainsFunc(now.Snapshots, func(r *pb.RunSnapshotRef) bool { return r.Offset == ref.Offset }) {
				sc.skip = "dropped from the index during the check"
			} else {
				sc.err = fmt.Errorf("the index lookup at offset %d does not return it (found %v)", ref.Covers, ok)
			}
		default:
			sc.hash = snap.State.Hash
			if sc.state, err = snap.State.MarshalBinary(); err != nil {
				sc.err = err
			}
			at[ref.Covers] = true
		}
		snaps = append(snaps, sc)
	}
	return snaps, at, nil
}

// foldOnNode folds run from its first event to offset last (included)
// from the node at f.Addr alone, waiting for the node to hold it, and
// records the fold at the offsets in at.
func foldOnNode(ctx context.Context, cfg client.Config, f *nodeFold, run string, last uint64, at map[uint64]bool) {
	cfg.Addrs = []string{f.Addr}
	cl, err := client.New(cfg)
	if err != nil {
		f.Err = err
		return
	}
	defer cl.Close()
	st := train.NewState(run)
	f.At = map[uint64]foldPoint{}
	for ev, err := range cl.Replay(ctx, 0, client.Stream(run), client.Local(), client.MinNextOffset(last+1), client.To(last+1)) {
		if err != nil {
			f.Err = err
			return
		}
		in := train.Input{Offset: ev.Offset, Timestamp: ev.Timestamp.UnixNano(), Type: ev.Type, Payload: ev.Payload}
		if err := st.Apply(in); err != nil {
			// A payload the fold cannot read (a newer schema version, a
			// malformed one) is still chained into the hash, and counted
			// in Skipped; an input out of order is a broken log.
			if errors.Is(err, train.ErrOutOfOrder) {
				f.Err = err
				return
			}
			if err := st.Skip(in); err != nil {
				f.Err = err
				return
			}
		}
		if at[in.Offset] {
			b, err := st.MarshalBinary()
			if err != nil {
				f.Err = err
				return
			}
			f.At[in.Offset] = foldPoint{hash: st.Hash, state: b}
		}
	}
	f.State = st
}

// judge compares the folds with each other (the majority is the
// reference) and the snapshots with the reference fold.
func judge(run string, target uint64, folds []nodeFold, snaps []snapCheck) verifyReport {
	rep := verifyReport{Run: run, TargetOffset: target, Nodes: []nodeVerifyJSON{}, Snapshots: []snapVerifyJSON{}, Problems: []string{}}
	ref := rep.judgeFolds(folds)
	for _, sc := range snaps {
		rep.Snapshots = append(rep.Snapshots, rep.judgeSnapshot(sc, folds, ref))
	}
	rep.Agree = len(rep.Problems) == 0
	return rep
}

func (rep *verifyReport) problem(format string, args ...any) {
	rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
}

// foldKey is what two folds of the same run must share.
type foldKey struct {
	hash                  [32]byte
	events, last, skipped uint64
}

func keyOf(f *nodeFold) foldKey {
	return foldKey{f.State.Hash, f.State.Events, f.State.LastOffset, f.State.Skipped}
}

// judgeFolds groups the folds that agree, reports every node outside the
// largest group (or that there is no majority) and fills rep.Nodes. It
// returns the index of a fold of the majority, or -1.
func (rep *verifyReport) judgeFolds(folds []nodeFold) (ref int) {
	if len(folds) == 0 {
		rep.problem("the cluster's status lists no node")
	}
	groups := map[foldKey][]int{}
	var order []foldKey
	for i := range folds {
		f := &folds[i]
		if f.Err != nil {
			rep.problem("node %s (%s): %v", f.ID, f.Addr, f.Err)
			continue
		}
		k := keyOf(f)
		if groups[k] == nil {
			order = append(order, k)
		}
		groups[k] = append(groups[k], i)
	}
	slices.SortStableFunc(order, func(a, b foldKey) int { return len(groups[b]) - len(groups[a]) })
	ref = -1
	if len(order) == 1 || len(order) > 1 && len(groups[order[0]]) > len(groups[order[1]]) {
		ref = groups[order[0]][0]
	}
	ids := func(k foldKey) string {
		var s []string
		for _, i := range groups[k] {
			s = append(s, folds[i].ID)
		}
		return strings.Join(s, ", ")
	}
	desc := func(k foldKey) string {
		return fmt.Sprintf("hash %x, %d events, last offset %d", k.hash[:8], k.events, k.last)
	}
	switch {
	case ref >= 0:
		for _, k := range order[1:] {
			rep.problem("node(s) %s diverge: %s; the majority (%s) has %s", ids(k), desc(k), ids(order[0]), desc(order[0]))
		}
		if last := folds[ref].State.LastOffset; last != rep.TargetOffset {
			rep.problem("the folds end at offset %d, but the run's last event is at offset %d", last, rep.TargetOffset)
		}
	case len(order) > 1:
		var parts []string
		for _, k := range order {
			parts = append(parts, ids(k)+": "+desc(k))
		}
		rep.problem("the nodes disagree with no majority: %s", strings.Join(parts, "; "))
	}
	for i := range folds {
		f := &folds[i]
		j := nodeVerifyJSON{ID: f.ID, APIAddress: f.Addr}
		if f.Err != nil {
			j.Error = f.Err.Error()
		} else {
			j.Hash, j.Events, j.LastOffset, j.Skipped = fmt.Sprintf("%x", f.State.Hash), f.State.Events, f.State.LastOffset, f.State.Skipped
			j.Agrees = ref >= 0 && keyOf(f) == keyOf(&folds[ref])
		}
		rep.Nodes = append(rep.Nodes, j)
	}
	return ref
}

// judgeSnapshot compares one snapshot with the fold folds[ref] at the
// offset it covers.
func (rep *verifyReport) judgeSnapshot(sc snapCheck, folds []nodeFold, ref int) snapVerifyJSON {
	j := snapVerifyJSON{Seq: sc.ref.Seq, Offset: sc.ref.Offset, Covers: sc.ref.Covers, Step: sc.ref.Step}
	switch {
	case sc.skip != "":
		j.Result, j.Detail = "skipped", sc.skip
		return j
	case sc.err != nil:
		j.Result, j.Detail = "error", sc.err.Error()
		rep.problem("snapshot #%d (offset %d): %v", sc.ref.Seq, sc.ref.Offset, sc.err)
		return j
	case ref < 0:
		j.Result, j.Detail = "skipped", "no fold to compare with: the nodes failed or disagree"
		return j
	}
	j.Hash = fmt.Sprintf("%x", sc.hash)
	p, ok := folds[ref].At[sc.ref.Covers]
	switch {
	case !ok:
		j.Result, j.Detail = "differs", fmt.Sprintf("it covers offset %d, which holds no event of the run", sc.ref.Covers)
	case p.hash != sc.hash:
		j.Result, j.Detail = "differs", fmt.Sprintf("hash %x, the fold from zero on %s has %x", sc.hash[:8], folds[ref].ID, p.hash[:8])
	case string(p.state) != string(sc.state):
		j.Result, j.Detail = "differs", fmt.Sprintf("same hash as the fold from zero on %s, but another state: the server's fold and this client's disagree", folds[ref].ID)
	default:
		j.Result = "equal"
		return j
	}
	rep.problem("snapshot #%d (offset %d, covers %d) differs from the fold from zero: %s", sc.ref.Seq, sc.ref.Offset, sc.ref.Covers, j.Detail)
	return j
}

// printRunVerify prints a verify report for people.
func printRunVerify(w io.Writer, rep verifyReport) {
	fmt.Fprintf(w, "run %s: folded from its first event on each node, up to offset %d (its last event)\n", rep.Run, rep.TargetOffset)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tAPI\tEVENTS\tLAST OFFSET\tHASH\t")
	for _, n := range rep.Nodes {
		if n.Error != "" {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\tERROR %s\n", n.ID, n.APIAddress, n.Error)
			continue
		}
		mark := ""
		if !n.Agrees {
			mark = "DIFFERS"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", n.ID, n.APIAddress, n.Events, n.LastOffset, n.Hash, mark)
	}
	tw.Flush()
	if len(rep.Snapshots) == 0 {
		fmt.Fprintln(w, "no snapshot of the run is indexed yet")
	} else {
		fmt.Fprintln(w, "\nsnapshots against the fold from zero at the offset each covers:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tOFFSET\tCOVERS\tSTEP\tRESULT\t")
		for _, s := range rep.Snapshots {
			fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%s\t%s\n", s.Seq, s.Offset, s.Covers, s.Step, s.Result, s.Detail)
		}
		tw.Flush()
	}
	if rep.Agree {
		equal := 0
		for _, s := range rep.Snapshots {
			if s.Result == "equal" {
				equal++
			}
		}
		fmt.Fprintf(w, "OK: all %d nodes agree (hash %s), %d snapshots equal the fold from zero\n", len(rep.Nodes), rep.Nodes[0].Hash, equal)
		return
	}
	fmt.Fprintf(w, "DIFFERENT: %d problems\n", len(rep.Problems))
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "  - %s\n", p)
	}
}
