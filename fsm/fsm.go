package fsm

import (
	"io"

	"github.com/hashicorp/raft"
)

// FSM adapts a Processor to raft.FSM. It holds no logic of its own.
type FSM struct {
	P *Processor
}

var (
	_ raft.FSM                = (*FSM)(nil)
	_ raft.ConfigurationStore = (*FSM)(nil)
)

// Apply implements raft.FSM. It returns *ApplyResult for command entries.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	return f.P.Apply(l.Index, l.Data)
}

// StoreConfiguration implements raft.ConfigurationStore. The FSM keeps no
// copy of the configuration (raft has it in its log and snapshots); being
// told of the entry advances the applied index over it, so that an index
// whose last entry is a configuration change counts as applied: snapshots
// can be taken and linearizable reads return right after a membership
// change, with no append since.
func (f *FSM) StoreConfiguration(index uint64, _ raft.Configuration) {
	f.P.ApplyNonCommand(index)
}

// Snapshot implements raft.FSM.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	s, err := f.P.Snapshot()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{s}, nil
}

// Restore implements raft.FSM.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	return f.P.Restore(rc)
}

type fsmSnapshot struct{ s *Snapshot }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.s.Persist(sink); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() { s.s.Release() }
