package fsm

import (
	"io"

	"github.com/hashicorp/raft"
)

// FSM adapts a Processor to raft.FSM. It holds no logic of its own.
type FSM struct {
	P *Processor
}

var _ raft.FSM = (*FSM)(nil)

// Apply implements raft.FSM. It returns *ApplyResult for command entries.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	return f.P.Apply(l.Index, l.Data)
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

func (s *fsmSnapshot) Release() {}
