package train

import (
	"errors"
	"fmt"
	"sync"
	"testing"
)

// EvalDone is a user event at version 3; versions 1 and 2 are its history.
type EvalDone struct {
	_msgpack struct{} `msgpack:",as_array"`
	Step     uint64
	Suite    string
	Scores   []float64
}

func (EvalDone) EventType() string     { return "EvalDone" }
func (EvalDone) SchemaVersion() uint16 { return 3 }

func (e EvalDone) Validate() error {
	if e.Suite == "" {
		return errors.New("no suite")
	}
	return nil
}

// evalDoneV1 had a single score and no suite.
type evalDoneV1 struct {
	_msgpack struct{} `msgpack:",as_array"`
	Step     uint64
	Score    float64
}

func (evalDoneV1) EventType() string     { return "EvalDone" }
func (evalDoneV1) SchemaVersion() uint16 { return 1 }

// evalDoneV2 added the suite.
type evalDoneV2 struct {
	_msgpack struct{} `msgpack:",as_array"`
	Step     uint64
	Score    float64
	Suite    string
}

func (evalDoneV2) EventType() string     { return "EvalDone" }
func (evalDoneV2) SchemaVersion() uint16 { return 2 }

func evalV2ToV3(v evalDoneV2) (EvalDone, error) {
	return EvalDone{Step: v.Step, Suite: v.Suite, Scores: []float64{v.Score}}, nil
}

func evalV1ToV3(v evalDoneV1) (EvalDone, error) {
	return evalV2ToV3(evalDoneV2{Step: v.Step, Score: v.Score, Suite: "default"})
}

func newEvalRegistry(t *testing.T) *Registry {
	t.Helper()
	r := NewRegistry()
	if err := Register(r, Upcast(1, evalV1ToV3), Upcast(2, evalV2ToV3)); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestUserTypeUpcasts(t *testing.T) {
	r := newEvalRegistry(t)
	if v, ok := r.Version("EvalDone"); !ok || v != 3 {
		t.Fatalf("Version(EvalDone) = %d %v", v, ok)
	}
	if _, ok := DefaultRegistry.Version("EvalDone"); ok {
		t.Fatal("registering in one registry changed DefaultRegistry")
	}
	for _, c := range []struct {
		old  Event
		want EvalDone
	}{
		{evalDoneV1{Step: 10, Score: 0.5}, EvalDone{Step: 10, Suite: "default", Scores: []float64{0.5}}},
		{evalDoneV2{Step: 11, Score: 0.25, Suite: "mmlu"}, EvalDone{Step: 11, Suite: "mmlu", Scores: []float64{0.25}}},
		{EvalDone{Step: 12, Suite: "gsm8k", Scores: []float64{1, 2}}, EvalDone{Step: 12, Suite: "gsm8k", Scores: []float64{1, 2}}},
	} {
		typ, p, err := Encode(c.old)
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.Decode(typ, p)
		if err != nil {
			t.Fatalf("%T: %v", c.old, err)
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%T decoded to %+v, want %+v", c.old, got, c.want)
		}
	}
	// An upcast result is validated too.
	_, p, _ := Encode(evalDoneV2{Step: 1, Score: 1})
	if _, err := r.Decode("EvalDone", p); !errors.Is(err, ErrMalformed) {
		t.Errorf("v2 with an empty suite upcast without error: %v", err)
	}
	// An old version is decoded as strictly as the current one.
	body, _ := marshalAppend(appendEnvelope(nil, 1), []any{10, 0.5, "surplus"})
	if _, err := r.Decode("EvalDone", body); !errors.Is(err, ErrMalformed) {
		t.Errorf("v1 with a third field: %v, want ErrMalformed", err)
	}
	// A newer one is refused.
	body, _ = marshalAppend(appendEnvelope(nil, 4), []any{10, "s", []float64{1}, 7})
	var uv *UnknownVersionError
	if _, err := r.Decode("EvalDone", body); !errors.As(err, &uv) || uv.Version != 4 || uv.Current != 3 {
		t.Errorf("v4: %v, want *UnknownVersionError v4/v3", err)
	}
}

func TestOlderVersionWithoutUpcaster(t *testing.T) {
	r := NewRegistry()
	if err := Register(r, Upcast(2, evalV2ToV3)); err != nil {
		t.Fatal(err)
	}
	_, p, _ := Encode(evalDoneV1{Step: 1, Score: 1})
	_, err := r.Decode("EvalDone", p)
	var uv *UnknownVersionError
	if !errors.As(err, &uv) || uv.Version != 1 || !errors.Is(err, ErrUnknownVersion) {
		t.Fatalf("v1 with no upcaster from v1: %v", err)
	}
	if uv.Error() != "train: EvalDone v1 has no upcaster to the registered v3" {
		t.Errorf("message %q", uv.Error())
	}
}

// Tagged is a user event encoded as a msgpack map with short keys.
type Tagged struct {
	Name  string `msgpack:"n"`
	Value int    `msgpack:"v"`
}

func (Tagged) EventType() string     { return "Tagged" }
func (Tagged) SchemaVersion() uint16 { return 1 }

func TestMapEncodedUserType(t *testing.T) {
	r := NewRegistry()
	if err := Register[Tagged](r); err != nil {
		t.Fatal(err)
	}
	typ, p, err := Encode(Tagged{Name: "a", Value: 3})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r.Decode(typ, p); err != nil || got != (Tagged{Name: "a", Value: 3}) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	// A newer writer's extra key is refused, never dropped.
	extra, _ := marshalAppend(appendEnvelope(nil, 1), map[string]any{"n": "a", "v": 3, "w": 4})
	if _, err := r.Decode("Tagged", extra); !errors.Is(err, ErrMalformed) {
		t.Errorf("unknown key: %v, want ErrMalformed", err)
	}
	arr, _ := marshalAppend(appendEnvelope(nil, 1), []any{"a", 3})
	if _, err := r.Decode("Tagged", arr); !errors.Is(err, ErrMalformed) {
		t.Errorf("array body for a map type: %v, want ErrMalformed", err)
	}
	// Missing keys are zero: a map writer may omit a field.
	short, _ := marshalAppend(appendEnvelope(nil, 1), map[string]any{"n": "a"})
	if got, err := r.Decode("Tagged", short); err != nil || got != (Tagged{Name: "a"}) {
		t.Errorf("missing key: %+v %v", got, err)
	}
}

type ptrEvent struct{}

func (*ptrEvent) EventType() string     { return "Ptr" }
func (*ptrEvent) SchemaVersion() uint16 { return 1 }

type reservedEvent struct{}

func (reservedEvent) EventType() string     { return "$mine" }
func (reservedEvent) SchemaVersion() uint16 { return 1 }

func TestRegisterRefuses(t *testing.T) {
	r := NewRegistry()
	for name, c := range map[string]struct {
		err  error
		want error
	}{
		"pointer type":        {Register[*ptrEvent](r), ErrInvalidEvent},
		"reserved name":       {Register[reservedEvent](r), ErrInvalidEvent},
		"version 0":           {Register[badVersion](r), ErrInvalidEvent},
		"built-in name":       {Register[BatchCompleted](r), ErrDuplicate},
		"upcaster from 0":     {Register(r, Upcast(0, evalV1ToV3)), ErrInvalidEvent},
		"upcaster from v3":    {Register(r, Upcast(3, evalV1ToV3)), ErrInvalidEvent},
		"two upcasters":       {Register(r, Upcast(1, evalV1ToV3), Upcast(1, evalV1ToV3)), ErrInvalidEvent},
		"nil upcaster decode": {Register(r, Upcaster[EvalDone]{From: 1}), ErrInvalidEvent},
	} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", name, c.err, c.want)
		}
	}
	if _, ok := r.Version("EvalDone"); ok {
		t.Error("a refused registration was kept")
	}
	if err := Register[EvalDone](r); err != nil {
		t.Fatal(err)
	}
	if err := Register[EvalDone](r); !errors.Is(err, ErrDuplicate) {
		t.Errorf("second registration: %v, want ErrDuplicate", err)
	}
}

// TestRegistryConcurrent registers and decodes at once (run with -race).
func TestRegistryConcurrent(t *testing.T) {
	r := NewRegistry()
	_, p, _ := Encode(EpochStarted{Epoch: 4})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 4 {
		wg.Go(func() {
			for range 100 {
				ev, err := r.Decode("EpochStarted", p)
				if err != nil || ev != (EpochStarted{Epoch: 4}) {
					errs <- fmt.Errorf("decode: %v %v", ev, err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		if err := Register[Tagged](r); err != nil {
			errs <- err
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, ok := r.Version("Tagged"); !ok {
		t.Error("Tagged not registered")
	}
}
