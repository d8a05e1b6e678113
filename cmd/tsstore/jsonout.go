package main

import (
	"encoding/base64"
	"time"
	"unicode/utf8"

	"github.com/tsstore/tsstore/client"
)

// The JSON lines of read, tail, streams and append (docs/operations.md,
// JSON output). Keys are snake_case like the .proto names that status and
// members print. "payload" and "metadata" are always present, as strings:
// the bytes themselves when they are valid UTF-8 (JSON, text), else their
// base64; "payload_encoding" / "metadata_encoding" say which ("utf-8" or
// "base64"). So `jq -r .payload` works on the usual JSON events and no
// byte is ever lost.

type eventJSON struct {
	Offset           uint64 `json:"offset"`
	Stream           string `json:"stream"`
	StreamVersion    uint64 `json:"stream_version"`
	Type             string `json:"type"`
	Timestamp        string `json:"timestamp"`
	RaftIndex        uint64 `json:"raft_index"`
	ProducerID       string `json:"producer_id,omitempty"`
	ProducerSeq      uint64 `json:"producer_seq,omitempty"`
	Metadata         string `json:"metadata"`
	MetadataEncoding string `json:"metadata_encoding"`
	Payload          string `json:"payload"`
	PayloadEncoding  string `json:"payload_encoding"`
}

func toEventJSON(ev client.RecordedEvent) eventJSON {
	j := eventJSON{
		Offset: ev.Offset, Stream: ev.Stream, StreamVersion: ev.StreamVersion, Type: ev.Type,
		Timestamp: ev.Timestamp.UTC().Format(time.RFC3339Nano), RaftIndex: ev.RaftIndex,
		ProducerID: ev.ProducerID, ProducerSeq: ev.ProducerSeq,
	}
	j.Metadata, j.MetadataEncoding = textOrBase64(ev.Metadata)
	j.Payload, j.PayloadEncoding = textOrBase64(ev.Payload)
	return j
}

// textOrBase64 is b as a string and its encoding: "utf-8" or "base64".
func textOrBase64(b []byte) (string, string) {
	if utf8.Valid(b) {
		return string(b), "utf-8"
	}
	return base64.StdEncoding.EncodeToString(b), "base64"
}

type streamJSON struct {
	Name          string `json:"name"`
	Version       uint64 `json:"version"`
	FirstOffset   uint64 `json:"first_offset"`
	LastOffset    uint64 `json:"last_offset"`
	LastTimestamp string `json:"last_timestamp"`
}

func toStreamJSON(st client.StreamInfo) streamJSON {
	return streamJSON{Name: st.Name, Version: st.Version, FirstOffset: st.FirstOffset, LastOffset: st.LastOffset,
		LastTimestamp: st.LastTimestamp.UTC().Format(time.RFC3339Nano)}
}

type appendJSON struct {
	FirstOffset    uint64            `json:"first_offset"`
	LastOffset     uint64            `json:"last_offset"`
	RaftIndex      uint64            `json:"raft_index"`
	Timestamp      string            `json:"timestamp"`
	Duplicate      bool              `json:"duplicate"`
	StreamVersions map[string]uint64 `json:"stream_versions"`
}

func toAppendJSON(r client.AppendResult) appendJSON {
	return appendJSON{FirstOffset: r.FirstOffset, LastOffset: r.LastOffset, RaftIndex: r.RaftIndex,
		Timestamp: r.Timestamp.UTC().Format(time.RFC3339Nano), Duplicate: r.Duplicate, StreamVersions: r.StreamVersions}
}
