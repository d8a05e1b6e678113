package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client"
)

func TestEventJSONKeepsTextReadableAndBytesExact(t *testing.T) {
	ts := time.Date(2026, 11, 23, 17, 0, 0, 5, time.UTC)
	text := client.RecordedEvent{Offset: 7, Stream: "run/a", StreamVersion: 3, Type: "EpochStarted", Timestamp: ts,
		RaftIndex: 9, ProducerID: "p", ProducerSeq: 2, Metadata: []byte(`{"rank":0}`), Payload: []byte(`{"epoch":47}`)}
	b, err := json.Marshal(toEventJSON(text))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"offset":7,"stream":"run/a","stream_version":3,"type":"EpochStarted","timestamp":"2026-11-23T17:00:00.000000005Z",` +
		`"raft_index":9,"producer_id":"p","producer_seq":2,"metadata":"{\"rank\":0}","metadata_encoding":"utf-8",` +
		`"payload":"{\"epoch\":47}","payload_encoding":"utf-8"}`
	if string(b) != want {
		t.Fatalf("text event:\n got %s\nwant %s", b, want)
	}

	bin := text
	bin.Metadata, bin.Payload = nil, []byte{0xff, 0x00, 0xfe}
	b, _ = json.Marshal(toEventJSON(bin))
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back["payload"] != "/wD+" || back["payload_encoding"] != "base64" || back["metadata"] != "" || back["metadata_encoding"] != "utf-8" {
		t.Fatalf("binary event: %s", b)
	}
}
