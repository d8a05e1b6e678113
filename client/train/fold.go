package train

import (
	"cmp"
	"fmt"
	"math"
	"slices"
)

// Apply folds in into s. It refuses, leaving s unchanged:
//   - an Offset not above LastOffset once anything was applied
//     (ErrOutOfOrder): a replay out of order is caught at once;
//   - a built-in type of a newer (or upcaster-less) schema version
//     (*UnknownVersionError), or a built-in type or fence whose payload
//     does not decode (ErrMalformed). The caller may stop, or Skip it.
//
// Any other type (user and system types) is hashed and counted, and
// changes nothing else.
func (s *State) Apply(in Input) error {
	if err := s.checkOrder(in); err != nil {
		return err
	}
	var ev Event
	var gen uint64
	var err error
	if in.Type == FenceType {
		gen, _, err = DecodeFence(in.Payload)
	} else if e := builtins.lookup(in.Type); e != nil {
		ev, err = e.decodePayload(in.Type, in.Payload)
	}
	if err != nil {
		return fmt.Errorf("train: offset %d: %w", in.Offset, err)
	}
	// Nothing below can fail.
	s.advance(in)
	switch {
	case in.Type == FenceType:
		s.applyFence(gen)
	case ev != nil:
		s.applyEvent(ev, in.Offset)
	}
	return nil
}

// Skip hashes and counts in without interpreting it, as Apply does with an
// unknown type: for a caller that chooses to get past an input Apply
// refused. Only ErrOutOfOrder is possible. Skipped inputs are counted in
// Skipped, so two folds agree only if they skipped the same inputs.
func (s *State) Skip(in Input) error {
	if err := s.checkOrder(in); err != nil {
		return err
	}
	s.advance(in)
	s.Skipped++
	return nil
}

func (s *State) checkOrder(in Input) error {
	if s.Events > 0 && in.Offset <= s.LastOffset {
		return fmt.Errorf("%w: offset %d after %d", ErrOutOfOrder, in.Offset, s.LastOffset)
	}
	return nil
}

// advance chains in into Hash and moves the position past it.
func (s *State) advance(in Input) {
	s.Hash = Chain(s.Hash, in)
	s.Events++
	s.LastOffset = in.Offset
	s.LastTimestamp = in.Timestamp
}

// applyFence starts a new attempt if gen is newer than Generation; an old
// or repeated fence changes nothing.
func (s *State) applyFence(gen uint64) {
	if gen <= s.Generation {
		return
	}
	s.Generation = gen
	s.Status, s.StatusReason = StatusRunning, ""
	s.Epoch, s.Batch, s.Step, s.LossStep, s.Loss, s.LearningRate = 0, 0, 0, 0, 0, 0
	s.Ranks, s.Pending = nil, nil
}

func (s *State) applyEvent(ev Event, off uint64) {
	if step, ok := eventStep(ev); ok {
		s.Step = max(s.Step, step)
		s.MaxStep = max(s.MaxStep, step)
	}
	switch e := ev.(type) {
	case TrainingStarted:
		s.Status, s.StatusReason = StatusRunning, ""
		s.Model, s.ConfigHash, s.WorldSize = e.Model, e.ConfigHash, e.WorldSize
		s.Hyperparameters = nil
		if e.Hyperparameters != nil {
			s.Hyperparameters = make(Params, len(e.Hyperparameters))
			for k, v := range e.Hyperparameters {
				s.Hyperparameters[k] = canon(v)
			}
		}
	case HyperparameterChanged:
		if s.Hyperparameters == nil {
			s.Hyperparameters = make(Params)
		}
		s.Hyperparameters[e.Name] = canon(e.New)
	case NodeJoined:
		r := s.rank(e.Rank)
		r.Host, r.Status, r.Reason = e.Host, RankLive, ""
	case NodeLeft:
		s.leave(e.Rank, e.Host, RankLeft, e.Reason, off)
	case NodeFailed:
		s.leave(e.Rank, e.Host, RankFailed, e.Reason, off)
	case EpochStarted:
		s.Epoch = e.Epoch
	case EpochCompleted:
		s.Epoch = e.Epoch
	case BatchCompleted:
		s.applyBatch(e, off)
	case CheckpointSaved:
		r := s.rank(e.Rank)
		r.LastStep = max(r.LastStep, e.Step)
		s.saveCheckpoint(e, off)
	case TrainingFinished:
		s.Status, s.StatusReason = StatusFinished, e.Reason
	case TrainingAborted:
		s.Status, s.StatusReason = StatusAborted, e.Reason
	}
}

// eventStep returns the step of the built-in events that carry one.
func eventStep(ev Event) (uint64, bool) {
	switch e := ev.(type) {
	case BatchCompleted:
		return e.Step, true
	case GradientSync:
		return e.Step, true
	case WeightUpdateApplied:
		return e.Step, true
	case CheckpointSaved:
		return e.Step, true
	case HyperparameterChanged:
		return e.Step, true
	case TrainingFinished:
		return e.Step, true
	case TrainingAborted:
		return e.Step, true
	}
	return 0, false
}

func (s *State) applyBatch(e BatchCompleted, off uint64) {
	s.Batches++
	r := s.rank(e.Rank)
	r.LastStep = max(r.LastStep, e.Step)
	if e.Step >= s.LossStep {
		s.LossStep, s.Epoch, s.Batch = e.Step, e.Epoch, e.Batch
		s.Loss, s.LearningRate = canon(e.Loss), canon(e.LearningRate)
	}
	if s.FirstNaN == nil && (math.IsNaN(e.Loss) || math.IsInf(e.Loss, 0)) {
		s.FirstNaN = &NaNAt{Step: e.Step, Offset: off, Rank: e.Rank, Loss: canon(e.Loss)}
	}
}

// rank returns rank r of the current attempt, adding it as live if no
// event named it before.
func (s *State) rank(r int) *RankState {
	i, ok := s.rankIndex(r)
	if !ok {
		s.Ranks = slices.Insert(s.Ranks, i, RankState{Rank: r, Status: RankLive})
	}
	return &s.Ranks[i]
}

func (s *State) leave(rank int, host string, st RankStatus, reason string, off uint64) {
	r := s.rank(rank)
	if host != "" {
		r.Host = host
	}
	r.Status, r.Reason = st, reason
	s.completeCheckpoints(off) // one rank fewer may complete a pending one
}

// saveCheckpoint records a rank's save. Saves for a step at or below the
// last complete checkpoint of the same attempt are stale and ignored.
func (s *State) saveCheckpoint(e CheckpointSaved, off uint64) {
	if lc := s.LastCheckpoint; lc != nil && lc.Generation == s.Generation && e.Step <= lc.Step {
		return
	}
	i, ok := slices.BinarySearchFunc(s.Pending, e.Step, func(c Checkpoint, step uint64) int {
		return cmp.Compare(c.Step, step)
	})
	if !ok {
		s.Pending = slices.Insert(s.Pending, i, Checkpoint{Step: e.Step, Generation: s.Generation})
		if len(s.Pending) > MaxPending { // evict the lowest step
			s.Pending = slices.Delete(s.Pending, 0, 1)
			if i == 0 {
				return // the new one was the lowest
			}
			i--
		}
	}
	c := &s.Pending[i]
	f := CheckpointFile{Rank: e.Rank, URI: e.URI, Size: e.Size, SHA256: e.SHA256}
	j, ok := slices.BinarySearchFunc(c.Files, e.Rank, func(f CheckpointFile, r int) int { return f.Rank - r })
	if ok {
		c.Files[j] = f // a rank's later save of the step replaces its earlier one
	} else {
		c.Files = slices.Insert(c.Files, j, f)
	}
	s.completeCheckpoints(off)
}

// completeCheckpoints promotes the highest complete pending checkpoint to
// LastCheckpoint and drops it and every pending one below it.
func (s *State) completeCheckpoints(off uint64) {
	for i := len(s.Pending) - 1; i >= 0; i-- {
		if !s.complete(&s.Pending[i]) {
			continue
		}
		c := s.Pending[i]
		c.Offset = off
		c.Majority, c.Disagree = majority(c.Files)
		s.LastCheckpoint = &c
		s.Pending = slices.Clone(s.Pending[i+1:])
		if len(s.Pending) == 0 {
			s.Pending = nil
		}
		return
	}
}

// complete reports whether every live rank (at least one) saved c.
func (s *State) complete(c *Checkpoint) bool {
	live := 0
	for _, r := range s.Ranks {
		if r.Status != RankLive {
			continue
		}
		live++
		if _, ok := slices.BinarySearchFunc(c.Files, r.Rank, func(f CheckpointFile, r int) int { return f.Rank - r }); !ok {
			return false
		}
	}
	return live > 0
}

// majority returns the most common hash of files (ties: the smallest) and
// the ranks whose hash differs from it.
func majority(files []CheckpointFile) (string, []int) {
	hashes := make([]string, len(files))
	for i, f := range files {
		hashes[i] = f.SHA256
	}
	slices.Sort(hashes)
	best, bestN := "", 0
	for i := 0; i < len(hashes); {
		j := i
		for j < len(hashes) && hashes[j] == hashes[i] {
			j++
		}
		if j-i > bestN { // strictly more: the first (smallest) wins ties
			best, bestN = hashes[i], j-i
		}
		i = j
	}
	var disagree []int
	for _, f := range files {
		if f.SHA256 != best {
			disagree = append(disagree, f.Rank)
		}
	}
	return best, disagree
}
