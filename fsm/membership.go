package fsm

import (
	"fmt"
	"maps"
	"slices"

	"github.com/vmihailenco/msgpack/v5"
)

// Membership is what the node table knows of members besides their API
// addresses: the incarnation each registered with, and the tombstones of
// removed incarnations.
//
// An incarnation is a random id a node creates with its data directory
// (node.json). A removed incarnation can never register again, so a node
// that comes back with the data it had when it was removed is refused,
// while the same node id with a wiped data directory (a new incarnation)
// may be added again.
//
// Encoding (frozen): msgpack array (Incarnations map, Removed array of
// Tombstone). It is an optional trailing element of State and of the node
// file, written only when not empty, so states and node files without
// membership data keep the first version's bytes.
type Membership struct {
	_msgpack     struct{}          `msgpack:",as_array"`
	Incarnations map[string]string // node id -> incarnation it registered with
	Removed      []Tombstone       // in the order they were committed
}

// Tombstone records that one incarnation of a node was removed.
// Frozen: msgpack array (NodeID, Incarnation, RaftIndex).
type Tombstone struct {
	_msgpack    struct{} `msgpack:",as_array"`
	NodeID      string
	Incarnation string
	RaftIndex   uint64 // index of the RemoveNode entry
}

func (m Membership) empty() bool { return len(m.Incarnations) == 0 && len(m.Removed) == 0 }

func (m Membership) clone() Membership {
	return Membership{Incarnations: maps.Clone(m.Incarnations), Removed: slices.Clone(m.Removed)}
}

// removed returns the tombstone of incarnation inc of node id. An empty
// incarnation is never tombstoned: it stands for "unknown".
func (m Membership) removed(id, inc string) (Tombstone, bool) {
	if inc == "" {
		return Tombstone{}, false
	}
	for _, t := range m.Removed {
		if t.NodeID == id && t.Incarnation == inc {
			return t, true
		}
	}
	return Tombstone{}, false
}

// EncodeMsgpack writes the node file as a 2-element array, or 3 with Members.
func (f nodesFile) EncodeMsgpack(e *msgpack.Encoder) error {
	n := 2
	if !f.Members.empty() {
		n = 3
	}
	if err := e.EncodeArrayLen(n); err != nil {
		return err
	}
	if err := e.Encode(f.Index); err != nil {
		return err
	}
	if err := e.Encode(f.Nodes); err != nil {
		return err
	}
	if n == 3 {
		return e.Encode(&f.Members)
	}
	return nil
}

// DecodeMsgpack reads a node file of 2 or 3 elements.
func (f *nodesFile) DecodeMsgpack(d *msgpack.Decoder) error {
	n, err := arrayLen(d, "node file", 2, 3)
	if err != nil {
		return err
	}
	if err := d.Decode(&f.Index); err != nil {
		return err
	}
	if err := d.Decode(&f.Nodes); err != nil {
		return err
	}
	if n == 3 {
		return d.Decode(&f.Members)
	}
	return nil
}

// EncodeMsgpack writes (ID, APIAddress), or (ID, APIAddress, Incarnation)
// when the incarnation is known.
func (c RegisterNodeCommand) EncodeMsgpack(e *msgpack.Encoder) error {
	fields := []string{c.ID, c.APIAddress}
	if c.Incarnation != "" {
		fields = append(fields, c.Incarnation)
	}
	if err := e.EncodeArrayLen(len(fields)); err != nil {
		return err
	}
	for _, f := range fields {
		if err := e.EncodeString(f); err != nil {
			return err
		}
	}
	return nil
}

// DecodeMsgpack reads a command of 2 or 3 elements.
func (c *RegisterNodeCommand) DecodeMsgpack(d *msgpack.Decoder) error {
	n, err := arrayLen(d, "register node command", 2, 3)
	if err != nil {
		return err
	}
	fields := []*string{&c.ID, &c.APIAddress, &c.Incarnation}
	for i := range n {
		if *fields[i], err = d.DecodeString(); err != nil {
			return err
		}
	}
	return nil
}

func arrayLen(d *msgpack.Decoder, what string, lo, hi int) (int, error) {
	n, err := d.DecodeArrayLen()
	if err != nil {
		return 0, err
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("msgpack: %s has %d elements, want %d to %d", what, n, lo, hi)
	}
	return n, nil
}

// Incarnation returns the incarnation node id registered with ("" if
// unknown).
func (p *Processor) Incarnation(id string) string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.mu.state.Members.Incarnations[id]
}

// Removed returns the tombstone of incarnation inc of node id, if that
// incarnation was removed from the cluster.
func (p *Processor) Removed(id, inc string) (Tombstone, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.mu.state.Members.removed(id, inc)
}

// Tombstones returns a copy of every removal tombstone, oldest first.
func (p *Processor) Tombstones() []Tombstone {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return slices.Clone(p.mu.state.Members.Removed)
}

// applyRegisterNode records a node's API address and incarnation. A
// tombstoned incarnation is refused (ErrNodeRemoved) and changes nothing;
// the leader checks before proposing, this covers a registration that
// raced with the removal.
func (p *Processor) applyRegisterNode(index uint64, cmd *RegisterNodeCommand) *ApplyResult {
	p.mu.Lock()
	st := p.mu.state
	if t, ok := st.Members.removed(cmd.ID, cmd.Incarnation); ok {
		p.mu.Unlock()
		return &ApplyResult{Err: fmt.Errorf("%w: node %s incarnation %s at raft index %d", ErrNodeRemoved, t.NodeID, t.Incarnation, t.RaftIndex)}
	}
	st.Nodes[cmd.ID] = cmd.APIAddress
	if cmd.Incarnation != "" {
		if st.Members.Incarnations == nil {
			st.Members.Incarnations = map[string]string{}
		}
		st.Members.Incarnations[cmd.ID] = cmd.Incarnation
	}
	return p.writeNodesLocked(index)
}

// applyRemoveNode tombstones one incarnation of a node and drops the node
// from the table if that incarnation is the one registered.
func (p *Processor) applyRemoveNode(index uint64, cmd *RemoveNodeCommand) *ApplyResult {
	p.mu.Lock()
	m := &p.mu.state.Members
	if _, ok := m.removed(cmd.ID, cmd.Incarnation); !ok {
		m.Removed = append(m.Removed, Tombstone{NodeID: cmd.ID, Incarnation: cmd.Incarnation, RaftIndex: index})
	}
	if m.Incarnations[cmd.ID] == cmd.Incarnation {
		delete(p.mu.state.Nodes, cmd.ID)
		delete(m.Incarnations, cmd.ID)
	}
	return p.writeNodesLocked(index)
}

// writeNodesLocked persists the node table as of index and unlocks p.mu.
func (p *Processor) writeNodesLocked(index uint64) *ApplyResult {
	f := nodesFile{Index: index, Nodes: maps.Clone(p.mu.state.Nodes), Members: p.mu.state.Members.clone()}
	p.mu.Unlock()
	if err := writeNodes(p.cfg.Dir, f); err != nil {
		return p.fail(err)
	}
	p.nodesWM = index
	return &ApplyResult{}
}
