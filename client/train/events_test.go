package train

import (
	"bufio"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// builtinSamples has one event of every built-in type, every field set.
func builtinSamples() []Event {
	return []Event{
		TrainingStarted{Model: "llama-7b", ConfigHash: "c0ffee", WorldSize: 8,
			Hyperparameters: Params{"lr": 3e-4, "warmup": 2000, "beta1": 0.9}},
		NodeJoined{Rank: 3, Host: "gpu-3"},
		NodeLeft{Rank: 4, Host: "gpu-4", Reason: "scale down"},
		NodeFailed{Rank: 5, Host: "gpu-5", Reason: "ECC error"},
		EpochStarted{Epoch: 2},
		EpochCompleted{Epoch: 2},
		BatchCompleted{Rank: 7, Epoch: 2, Batch: 513, Step: 70000, Loss: 2.5, LearningRate: 1e-4, Samples: 1024},
		GradientSync{Step: 70000, Ranks: 8, Bytes: 1 << 33, Micros: 15000},
		WeightUpdateApplied{Step: 70000, ParamHash: "ab12"},
		CheckpointSaved{Step: 70000, Rank: 1, URI: "s3://ckpt/70000/1", Size: 1 << 30, SHA256: strings.Repeat("e3", 32)},
		HyperparameterChanged{Step: 70001, Name: "lr", Old: 1e-4, New: 5e-5},
		TrainingFinished{Step: 90000, Reason: "max steps"},
		TrainingAborted{Step: 12, Reason: "operator"},
	}
}

func TestBuiltinsRoundTrip(t *testing.T) {
	var names []string
	for _, ev := range builtinSamples() {
		typ, payload, err := Encode(ev)
		if err != nil {
			t.Fatalf("Encode(%T): %v", ev, err)
		}
		if typ != reflect.TypeOf(ev).Name() {
			t.Errorf("Encode(%T) type %q, want the struct name", ev, typ)
		}
		got, err := Decode(typ, payload)
		if err != nil {
			t.Fatalf("Decode(%s): %v", typ, err)
		}
		if !reflect.DeepEqual(got, ev) {
			t.Errorf("%s: round trip gave %+v, want %+v", typ, got, ev)
		}
		// A pointer encodes to the same bytes.
		ptr := reflect.New(reflect.TypeOf(ev))
		ptr.Elem().Set(reflect.ValueOf(ev))
		if _, p2, err := Encode(ptr.Interface().(Event)); err != nil || string(p2) != string(payload) {
			t.Errorf("%s: pointer encodes to %x (%v), value to %x", typ, p2, err, payload)
		}
		names = append(names, typ)
	}
	slices.Sort(names)
	if got := NewRegistry().Types(); !slices.Equal(got, names) {
		t.Errorf("built-in types %v, samples cover %v", got, names)
	}
}

func TestNaNLossRoundTrips(t *testing.T) {
	for _, loss := range []float64{math.NaN(), math.Inf(1), math.Inf(-1), math.Copysign(0, -1)} {
		_, p, err := Encode(BatchCompleted{Loss: loss})
		if err != nil {
			t.Fatal(err)
		}
		ev, err := Decode("BatchCompleted", p)
		if err != nil {
			t.Fatal(err)
		}
		if got := ev.(BatchCompleted).Loss; math.Float64bits(got) != math.Float64bits(loss) {
			t.Errorf("loss %v decoded as %v", loss, got)
		}
	}
}

// TestGoldenPayloads freezes the payload bytes of every built-in type.
func TestGoldenPayloads(t *testing.T) {
	var b strings.Builder
	for _, ev := range builtinSamples() {
		typ, p, err := Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %x\n", typ, p)
	}
	checkGolden(t, "testdata/payloads.golden", b.String())
}

func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs: a frozen format changed.\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// v1Batch is BatchCompleted{Rank 2, Epoch 1, Batch 9, Step 300, Loss
// 0.75 as float32, LearningRate 0.001} as the schema v1 writer wrote it.
const v1Batch = "9201" + "96" + "02" + "01" + "09" + "cd012c" + "ca3f400000" + "cb3f50624dd2f1a9fc"

func TestBatchCompletedV1Upcast(t *testing.T) {
	old := batchCompletedV1{Rank: 2, Epoch: 1, Batch: 9, Step: 300, Loss: 0.75, LearningRate: 0.001}
	typ, p, err := Encode(old)
	if err != nil {
		t.Fatal(err)
	}
	if typ != "BatchCompleted" || hex.EncodeToString(p) != v1Batch {
		t.Fatalf("the v1 encoder wrote %s %x, want BatchCompleted %s", typ, p, v1Batch)
	}
	raw, _ := hex.DecodeString(v1Batch)
	ev, err := Decode("BatchCompleted", raw)
	if err != nil {
		t.Fatal(err)
	}
	want := BatchCompleted{Rank: 2, Epoch: 1, Batch: 9, Step: 300, Loss: 0.75, LearningRate: 0.001}
	if ev != want {
		t.Errorf("v1 upcast to %+v, want %+v", ev, want)
	}
	// A v1 body must still be exactly v1: six fields.
	bad := "9201" + "97" + "02" + "01" + "09" + "cd012c" + "ca3f400000" + "cb3f50624dd2f1a9fc" + "00"
	raw, _ = hex.DecodeString(bad)
	if _, err := Decode("BatchCompleted", raw); !errors.Is(err, ErrMalformed) {
		t.Errorf("v1 body of seven fields: %v, want ErrMalformed", err)
	}
}

func TestNewerVersionIsUnknown(t *testing.T) {
	// What a v3 writer might send: the v2 fields and one more.
	body, err := marshalAppend(nil, []any{7, 2, 513, 70000, 2.5, 1e-4, 1024, "extra"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Decode("BatchCompleted", append(appendEnvelope(nil, 3), body...))
	var uv *UnknownVersionError
	if !errors.As(err, &uv) || !errors.Is(err, ErrUnknownVersion) {
		t.Fatalf("v3 payload: %v, want *UnknownVersionError", err)
	}
	if uv.Type != "BatchCompleted" || uv.Version != 3 || uv.Current != 2 {
		t.Errorf("error %+v, want BatchCompleted v3 current v2", uv)
	}
	if errors.Is(err, ErrMalformed) {
		t.Error("a newer version is not malformed")
	}
}

func TestUnknownType(t *testing.T) {
	for _, typ := range []string{"Nope", FenceType, ""} {
		if _, err := Decode(typ, []byte{0x92, 1, 0x90}); !errors.Is(err, ErrUnknownType) {
			t.Errorf("Decode(%q): %v, want ErrUnknownType", typ, err)
		}
	}
}

func TestStrictDecode(t *testing.T) {
	env := func(ver uint16, fields ...any) []byte {
		b, err := marshalAppend(appendEnvelope(nil, ver), fields)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := env(2, 7, 2, 513, 70000, 2.5, 1e-4, 1024)
	if _, err := Decode("BatchCompleted", good); err != nil {
		t.Fatalf("well-formed payload refused: %v", err)
	}
	mapBody, _ := marshalAppend(appendEnvelope(nil, 2), map[string]any{"Rank": 1})
	for name, p := range map[string][]byte{
		"extra field":        env(2, 7, 2, 513, 70000, 2.5, 1e-4, 1024, 5),
		"missing field":      env(2, 7, 2, 513, 70000, 2.5, 1e-4),
		"empty array":        env(2),
		"trailing bytes":     append(slices.Clone(good), 0x00),
		"map body":           mapBody,
		"nil body":           {0x92, 2, 0xc0},
		"string in a number": env(2, 7, 2, 513, "x", 2.5, 1e-4, 1024),
		"negative rank":      env(2, -1, 2, 513, 70000, 2.5, 1e-4, 1024),
		"truncated":          good[:len(good)-3],
		"no body":            {0x92, 2},
		"version 0":          env(0, 7, 2, 513, 70000, 2.5, 1e-4, 1024),
		"negative version":   {0x92, 0xff, 0x90},
		"envelope of 3":      {0x93, 2, 0x90, 0x90},
		"empty":              {},
	} {
		if _, err := Decode("BatchCompleted", p); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s (%x): %v, want ErrMalformed", name, p, err)
		}
	}
}

func TestEnvelopeVersions(t *testing.T) {
	for _, v := range []uint16{1, 2, 127, 128, 255, 256, 65535} {
		p := append(appendEnvelope(nil, v), 0x90)
		got, body, err := splitEnvelope(p)
		if err != nil || got != v || len(body) != 1 {
			t.Errorf("version %d: split to %d %x %v", v, got, body, err)
		}
	}
	// Readers accept any integer encoding of the version, as other
	// languages' msgpack writers may use a wider one.
	body, _ := marshalAppend(nil, []any{7, 2, 513, 70000, 2.5, 1e-4, 1024})
	for _, head := range []string{"9202", "92cc02", "92cd0002", "92ce00000002", "92cf0000000000000002", "92d002", "92d30000000000000002"} {
		h, _ := hex.DecodeString(head)
		if _, err := Decode("BatchCompleted", append(h, body...)); err != nil {
			t.Errorf("envelope %s: %v", head, err)
		}
	}
	h, _ := hex.DecodeString("92ce00010000") // 65536
	if _, err := Decode("BatchCompleted", append(h, body...)); !errors.Is(err, ErrMalformed) {
		t.Errorf("version 65536: %v, want ErrMalformed", err)
	}
}

type badVersion struct{}

func (badVersion) EventType() string     { return "BadVersion" }
func (badVersion) SchemaVersion() uint16 { return 0 }

type namedEvent struct{ name string }

func (e namedEvent) EventType() string   { return e.name }
func (namedEvent) SchemaVersion() uint16 { return 1 }

func TestEncodeRefuses(t *testing.T) {
	for name, ev := range map[string]Event{
		"nil":           nil,
		"nil pointer":   (*BatchCompleted)(nil),
		"version 0":     badVersion{},
		"empty type":    namedEvent{""},
		"reserved type": namedEvent{FenceType},
		"long type":     namedEvent{strings.Repeat("x", MaxTypeLen+1)},
		"invalid rank":  NodeJoined{Rank: -1},
		"huge rank":     BatchCompleted{Rank: MaxRank + 1},
	} {
		if _, _, err := Encode(ev); !errors.Is(err, ErrInvalidEvent) {
			t.Errorf("%s: %v, want ErrInvalidEvent", name, err)
		}
	}
	if typ, _, err := Encode(namedEvent{strings.Repeat("x", MaxTypeLen)}); err != nil || len(typ) != MaxTypeLen {
		t.Errorf("type of MaxTypeLen bytes: %v", err)
	}
}

func TestFence(t *testing.T) {
	for _, c := range []struct {
		gen    uint64
		reason string
	}{{0, ""}, {1, "first attempt"}, {math.MaxUint64, strings.Repeat("r", 300)}} {
		gen, reason, err := DecodeFence(EncodeFence(c.gen, c.reason))
		if err != nil || gen != c.gen || reason != c.reason {
			t.Errorf("fence %d %q decoded as %d %q %v", c.gen, c.reason, gen, reason, err)
		}
	}
	if got := hex.EncodeToString(EncodeFence(2, "node 3 failed")); got != "9202ad6e6f64652033206661696c6564" {
		t.Errorf("EncodeFence(2, ...) = %s: the frozen fence format changed", got)
	}
	for _, p := range []string{"", "91", "9202", "920201", "9202a0c0", "93020a0a", "92ffa0", "92a0a0", "9202c0", "9202ad6e6f"} {
		b, _ := hex.DecodeString(p)
		if _, _, err := DecodeFence(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeFence(%s): %v, want ErrMalformed", p, err)
		}
	}
}

// readGoldenLines reads "key hex" lines.
func readGoldenLines(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		if out[k], err = hex.DecodeString(v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	return out
}
