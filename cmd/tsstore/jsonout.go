package main

import (
	"time"
	"unicode/utf8"

	"github.com/tsstore/tsstore/client"
)

// The JSON lines of read, tail, streams and append. Keys are snake_case
// like the .proto names that status and members print. A payload or
// metadata that is valid UTF-8 (JSON, text) is a string under "payload" /
// "metadata"; other bytes are base64 under "payload_base64" /
// "metadata_base64", so `jq -r .payload` works on the usual JSON events
// and no byte is ever lost.

type eventJSON struct {
	Offset         uint64 `json:"offset"`
	Stream         string `json:"stream"`
	StreamVersion  uint64 `json:"stream_version"`
	Type           string `json:"type"`
	Timestamp      string `json:"timestamp"`
	RaftIndex      uint64 `json:"raft_index"`
	ProducerID     string `json:"producer_id,omitempty"`
	ProducerSeq    uint64 `json:"producer_seq,omitempty"`
	Metadata       string `json:"metadata,omitempty"`
	MetadataBase64 []byte `json:"metadata_base64,omitempty"`
	Payload        string `json:"payload,omitempty"`
	PayloadBase64  []byte `json:"payload_base64,omitempty"`
}

func toEventJSON(ev client.RecordedEvent) eventJSON {
	j := eventJSON{
		Offset: ev.Offset, Stream: ev.Stream, StreamVersion: ev.StreamVersion, Type: ev.Type,
		Timestamp: ev.Timestamp.UTC().Format(time.RFC3339Nano), RaftIndex: ev.RaftIndex,
		ProducerID: ev.ProducerID, ProducerSeq: ev.ProducerSeq,
	}
	j.Metadata, j.MetadataBase64 = textOrBytes(ev.Metadata)
	j.Payload, j.PayloadBase64 = textOrBytes(ev.Payload)
	return j
}

func textOrBytes(b []byte) (string, []byte) {
	if utf8.Valid(b) {
		return string(b), nil
	}
	return "", b
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
