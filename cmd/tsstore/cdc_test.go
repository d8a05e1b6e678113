package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/tsstore/tsstore/cdc/pgsource"
	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/storetest"
)

// Settings of cdc and sink: flag over environment over file over default;
// an unknown key of the file is a usage error.
func TestApplySettings(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(file, []byte("slot = \"from_file\"\npublication = \"pub_file\"\nstream_prefix = \"x/\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	slot := fs.String("slot", "", "")
	pub := fs.String("publication", "", "")
	prefix := fs.String("stream-prefix", "cdc/", "")
	chunk := fs.Int("snapshot-chunk-rows", 5000, "")
	if err := fs.Parse([]string{"--slot", "from_flag"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TSSTORE_CDC_PUBLICATION", "pub_env")
	if err := applySettings(fs, file, "TSSTORE_CDC_"); err != nil {
		t.Fatal(err)
	}
	if *slot != "from_flag" || *pub != "pub_env" || *prefix != "x/" || *chunk != 5000 {
		t.Fatalf("slot %q publication %q prefix %q chunk %d", *slot, *pub, *prefix, *chunk)
	}
	if err := os.WriteFile(file, []byte("slto = \"typo\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := applySettings(fs, file, "TSSTORE_CDC_"); !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "unknown keys slto") {
		t.Fatalf("typo: %v", err)
	}
}

// cdc read prints the connector's events decoded.
func TestCDCRead(t *testing.T) {
	store := storetest.Start(t, 1)
	change, err := msgpack.Marshal(&pgsource.Change{Table: "public.a", Op: pgsource.OpInsert, New: map[string]any{"id": int64(7)}, CommitLSN: "0/10"})
	if err != nil {
		t.Fatal(err)
	}
	marker, err := msgpack.Marshal(&pgsource.Marker{Slot: "s", Xid: 9, CommitLSN: 0x10, EndLSN: 0x20, Changes: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = store.Client.Append(context.Background(),
		client.Event{Stream: "cdc/db/public.a", Type: pgsource.TypeRowInserted, Metadata: []byte(`{"xid":9}`), Payload: change},
		client.Event{Stream: "cdc/db", Type: pgsource.TypeTransaction, Payload: marker},
		client.Event{Stream: "other", Type: "X"})
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"cdc", "read", "--addr", strings.Join(store.Addrs, ",")}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("output:\n%s", out.String())
	}
	var row, mk struct {
		Stream   string
		Metadata map[string]any
		Payload  map[string]any
	}
	if err := json.Unmarshal([]byte(lines[0]), &row); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &mk); err != nil {
		t.Fatal(err)
	}
	if row.Payload["op"] != "insert" || row.Payload["new"].(map[string]any)["id"] != 7.0 || row.Metadata["xid"] != 9.0 {
		t.Fatalf("row: %+v", row)
	}
	if mk.Payload["commit_lsn"] != "0/10" || mk.Payload["end_lsn"] != "0/20" || mk.Stream != "cdc/db" {
		t.Fatalf("marker: %+v", mk)
	}
}
