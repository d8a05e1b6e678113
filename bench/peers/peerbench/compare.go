package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// durability says when each known system acknowledges a write.
var durability = map[string]string{
	"tsstore":          "acknowledges after the entry is fsynced on a majority (raft-wal)",
	"nats-default":     "ACKNOWLEDGES BEFORE FSYNC: a majority has the message in the OS page cache; files are fsynced every 2 min (default sync_interval)",
	"nats-sync-always": "sync_interval: always: the stream's Raft log is fsynced on every write (the message files sync on flush) before the ack",
	"etcd":             "acknowledges after the Raft WAL entry is fsynced on a majority",
}

func compareCmd(args []string, w io.Writer) error {
	fs := flag.NewFlagSet("compare", flag.ExitOnError)
	md := fs.Bool("markdown", false, "print a markdown table")
	fs.Parse(args)
	var reps []*Report
	for _, p := range fs.Args() {
		r, err := readReport(p)
		if err != nil {
			return err
		}
		reps = append(reps, r)
	}
	if len(reps) == 0 {
		return fmt.Errorf("compare: no reports")
	}
	reps = merge(reps)
	grid := table(reps)
	if *md {
		writeMarkdown(w, grid)
	} else {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, row := range grid {
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
		}
		tw.Flush()
	}
	fmt.Fprintln(w)
	for _, l := range legend(reps) {
		if *md {
			fmt.Fprintln(w, "* "+l)
		} else {
			fmt.Fprintln(w, l)
		}
	}
	return nil
}

// merge joins reports of the same system (run.sh runs tsstore bench once
// for the replay workloads and once for the append ones), in order; a
// later result for a workload replaces an earlier one.
func merge(reps []*Report) []*Report {
	var out []*Report
	by := map[string]*Report{}
	for _, r := range reps {
		m, ok := by[r.System]
		if !ok {
			c := *r
			c.Results = slices.Clone(r.Results)
			by[r.System] = &c
			out = append(out, &c)
			continue
		}
		for _, res := range r.Results {
			if i := slices.IndexFunc(m.Results, func(x Result) bool { return x.Workload == res.Workload }); i >= 0 {
				m.Results[i] = res
			} else {
				m.Results = append(m.Results, res)
			}
		}
		if m.Machine == nil {
			m.Machine = r.Machine
		}
	}
	return out
}

// mergeCmd writes the merged reports of one system to one file.
func mergeCmd(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("merge OUT.json IN.json...")
	}
	var reps []*Report
	for _, p := range args[1:] {
		r, err := readReport(p)
		if err != nil {
			return err
		}
		reps = append(reps, r)
	}
	m := merge(reps)
	if len(m) != 1 {
		return fmt.Errorf("merge: reports of %d systems", len(m))
	}
	return writeReport(args[0], m[0])
}

// readReport reads one report. It also takes the older `tsstore bench
// --out` file, a bare array of replay rows, and names its rows by id.
func readReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err == nil {
		if r.System == "" {
			r.System = strings.TrimSuffix(path[strings.LastIndex(path, "/")+1:], ".json")
		}
		return &r, nil
	}
	var old []Result
	if err := json.Unmarshal(b, &old); err != nil {
		return nil, fmt.Errorf("%s: neither a report nor a bench array: %w", path, err)
	}
	r = Report{System: "tsstore"}
	for _, o := range old {
		n, _ := strconv.Atoi(o.Note)
		switch {
		case strings.HasPrefix(o.Workload, "replay all"):
			o.Name, o.Workload = o.Workload, "d-"+short(n)
		case strings.HasPrefix(o.Workload, "replay one stream"):
			o.Name, o.Workload = o.Workload, "e"
		default:
			continue
		}
		o.Note = "log " + o.Note + " events"
		r.Results = append(r.Results, o)
	}
	return &r, nil
}

// order sorts workload ids: a, b, c, d by log size, e, e-scan, f, g, then
// others.
func order(id string) (int, int) {
	switch {
	case id == "a", id == "b", id == "c":
		return int(id[0] - 'a'), 0
	case strings.HasPrefix(id, "d-"):
		return 3, logSize(id[2:])
	case id == "e":
		return 4, 0
	case strings.HasPrefix(id, "e-"):
		return 4, 1
	case id == "f":
		return 5, 0
	case id == "g":
		return 6, 0
	}
	return 7, 0
}

func logSize(s string) int {
	mult := 1
	switch {
	case strings.HasSuffix(s, "M"):
		mult, s = 1_000_000, s[:len(s)-1]
	case strings.HasSuffix(s, "k"):
		mult, s = 1000, s[:len(s)-1]
	}
	n, _ := strconv.Atoi(s)
	return n * mult
}

// table lays out rows = workloads, one column per system, then one ratio
// column tsstore/peer per peer when a tsstore report is present. The last
// result of a workload in a report wins.
func table(reps []*Report) [][]string {
	byID := make([]map[string]Result, len(reps))
	var ids []string
	names := map[string]string{}
	for i, r := range reps {
		byID[i] = map[string]Result{}
		for _, res := range r.Results {
			if !slices.Contains(ids, res.Workload) {
				ids = append(ids, res.Workload)
			}
			if names[res.Workload] == "" {
				names[res.Workload] = res.Name
			}
			byID[i][res.Workload] = res
		}
	}
	force := []string{"a", "b", "c", "e", "f", "g"}
	if !slices.ContainsFunc(ids, func(id string) bool { return strings.HasPrefix(id, "d-") }) {
		force = append(force, "d-1M")
	}
	for _, id := range force {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	slices.SortStableFunc(ids, func(x, y string) int {
		a1, a2 := order(x)
		b1, b2 := order(y)
		if a1 != b1 {
			return a1 - b1
		}
		return a2 - b2
	})
	ts := -1
	for i, r := range reps {
		if r.System == "tsstore" {
			ts = i
		}
	}
	head := []string{"workload"}
	for _, r := range reps {
		h := r.System
		if strings.Contains(durability[h], "BEFORE FSYNC") {
			h += " (no fsync)"
		}
		head = append(head, h)
	}
	if ts >= 0 {
		for i, r := range reps {
			if i != ts {
				head = append(head, "tsstore/"+r.System)
			}
		}
	}
	grid := [][]string{head}
	for _, id := range ids {
		label := id
		if names[id] != "" {
			label += " " + names[id]
		} else {
			label += " " + defaultNames[strings.SplitN(id, "-", 2)[0]]
		}
		row := []string{label}
		for i := range reps {
			row = append(row, cell(byID[i], id))
		}
		if ts >= 0 {
			for i := range reps {
				if i != ts {
					row = append(row, ratio(byID[ts], byID[i], id))
				}
			}
		}
		grid = append(grid, row)
	}
	return grid
}

var defaultNames = map[string]string{
	"a": "1 producer, waiting", "b": "64 producers, waiting", "c": "1 producer, batched+pipelined",
	"d": "replay all from the start", "e": "replay one stream", "f": "64 producers, leader killed",
	"g": "bytes on disk per event",
}

// headline is the figure a row compares: events/s, or for f the time to
// the first acknowledged write, or for g the bytes per event.
func headline(m map[string]Result, id string) (float64, bool) {
	r, ok := m[id]
	if !ok {
		return 0, false
	}
	switch id {
	case "f":
		if r.FirstAckMs == nil {
			return 0, false
		}
		return *r.FirstAckMs, true
	case "g":
		if r.SegmentBytesPerEvent == nil {
			return 0, false
		}
		return *r.SegmentBytesPerEvent, true
	}
	return r.EventsPS, r.EventsPS > 0
}

func cell(m map[string]Result, id string) string {
	r, ok := m[id]
	if !ok {
		return "n/a"
	}
	switch id {
	case "f":
		s := "first ack " + msOrNA(r.FirstAckMs) + ", back " + msOrNA(r.RecoveredMs)
		if r.EventsPS > 0 {
			s += fmt.Sprintf(" (%s ev/s overall)", commas(r.EventsPS))
		}
		return s
	case "g":
		if r.SegmentBytesPerEvent == nil {
			return "n/a"
		}
		s := fmt.Sprintf("%.0f B", *r.SegmentBytesPerEvent)
		if r.RaftBytesPerEvent != nil {
			s += fmt.Sprintf(" (raft log %.0f B)", *r.RaftBytesPerEvent)
		}
		return s
	}
	s := commas(r.EventsPS) + " ev/s"
	if r.P99 > 0 {
		s += fmt.Sprintf(", p99 %s ms", trimFloat(r.P99))
	}
	return s
}

func ratio(ts, peer map[string]Result, id string) string {
	a, ok1 := headline(ts, id)
	b, ok2 := headline(peer, id)
	if !ok1 || !ok2 || b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func msOrNA(f *float64) string {
	if f == nil {
		return "n/a"
	}
	return commas(*f) + " ms"
}

func trimFloat(f float64) string {
	switch {
	case f >= 100:
		return fmt.Sprintf("%.0f", f)
	case f >= 10:
		return fmt.Sprintf("%.1f", f)
	}
	return fmt.Sprintf("%.2f", f)
}

// commas formats a rounded number with thousands separators.
func commas(f float64) string {
	s := strconv.FormatInt(int64(f+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func writeMarkdown(w io.Writer, grid [][]string) {
	for i, row := range grid {
		fmt.Fprintln(w, "| "+strings.Join(row, " | ")+" |")
		if i == 0 {
			seps := make([]string, len(row))
			seps[0] = "---"
			for j := 1; j < len(row); j++ {
				seps[j] = "---:"
			}
			fmt.Fprintln(w, "|"+strings.Join(seps, "|")+"|")
		}
	}
}

// legend explains the columns: what each system's acknowledgement means,
// the machine, and how to read the ratios.
func legend(reps []*Report) []string {
	var l []string
	for _, r := range reps {
		d := durability[r.System]
		if d == "" {
			d = "durability not known to peerbench"
		}
		v := ""
		if sv, ok := r.Config["server"].(string); ok {
			v = " [" + sv + "]"
		}
		l = append(l, fmt.Sprintf("%s%s: %s", r.System, v, d))
	}
	m := reps[0].Machine
	if m != nil {
		l = append(l, fmt.Sprintf("machine: %v, %v cores, %v GiB, kernel %v, %v; each system's three nodes and its client share this one machine",
			m["cpu"], m["cores"], m["memory_gib"], m["kernel"], m["date"]))
	}
	l = append(l, "ratios are tsstore ÷ peer of the row's headline: events/s for a-e (above 1: tsstore faster); "+
		"first-ack ms for f and bytes/event for g (below 1: tsstore better); n/a: not measured")
	return l
}
