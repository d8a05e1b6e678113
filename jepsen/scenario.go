package jepsen

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Scenario is a named fault mix.
type Scenario struct {
	Name string
	Doc  string
	// Faults are drawn from at random (seeded) one at a time.
	Faults []string
	// Active is the range of a fault's duration; Quiet the pause between
	// two faults.
	Active, Quiet [2]time.Duration
	// FaultFS runs the tsstore binary built with -tags faultfs: unsynced
	// segment writes are lost when a node is killed.
	FaultFS bool
	// ServeArgs are added to every `tsstore serve`.
	ServeArgs []string
	// Fencing adds the fencing workload (fencing.go): training runs whose
	// job attempts are replaced while the old writers keep appending; its
	// history is judged by rule 10 too.
	Fencing bool
	// Overhead is how much longer than its drawn duration a fault takes
	// (membership changes: removal, restart, catch-up, promotion); the
	// planner leaves room for it.
	Overhead time.Duration
	// Disk puts every node's data directory on a small filesystem of its
	// own, which disk faults fill (diskfault.go), and sets the nodes'
	// free-space watermarks.
	Disk *DiskSpec
	// Retention sets a retention policy before the workload starts and
	// adds its keeper (retention.go); its history is judged by rule 12.
	Retention *RetentionSpec
	// Compaction adds the compaction workload (compaction.go): training
	// runs compacted to their snapshots and deleted streams; its history
	// is judged by rule 13.
	Compaction *CompactionSpec
	// Tiering runs the nodes with cold tiering to a real versitygw behind
	// a fault-injecting proxy and adds the store nemesis (tiering.go); its
	// history is judged by rule 14.
	Tiering *TieringSpec
}

// snapshotArgs make snapshots frequent and the Raft log short, so a
// follower cut off for a few seconds can only catch up by InstallSnapshot.
var snapshotArgs = []string{"--snapshot-threshold", "256", "--trailing-logs", "64",
	"--snapshot-interval", "500ms", "--segment-bytes", "1048576"}

// retentionArgs make segments small (64 KiB: the workload seals a few a
// second), the leader plan a cut every second, and snapshots frequent, so
// cuts, snapshots and InstallSnapshot overlap.
var retentionArgs = []string{"--snapshot-threshold", "256", "--trailing-logs", "64",
	"--snapshot-interval", "500ms", "--segment-bytes", "65536", "--retention-interval", "1s"}

// compactionArgs: retentionArgs with run compaction on (no retention
// policy is set, so nothing is cut), a run snapshot every 8
// BatchCompleted, and a grace long enough that only runs whose last event
// finished them are compacted.
var compactionArgs = append(slices.Clone(retentionArgs), "--run-compaction", "--run-snapshot-batches", "8",
	"--run-compaction-grace", "1h")

// defaultKeep are the types run compaction keeps by default
// (compaction.DefaultKeep, docs/operations.md), which the harness, a black
// box, repeats.
var defaultKeep = []string{"CheckpointSaved", "NodeFailed", "TrainingStarted", "TrainingFinished", "TrainingAborted", "$fence", "$snapshot"}

// Scenarios lists every scenario, in the order `-scenario all` runs them.
var Scenarios = []Scenario{
	{Name: "crash", Doc: "SIGKILL or SIGTERM the leader or a follower, restart it",
		Faults: []string{"kill-leader", "kill-follower", "term-leader", "term-follower"},
		Active: [2]time.Duration{time.Second, 4 * time.Second}, Quiet: [2]time.Duration{time.Second, 3 * time.Second}},
	{Name: "pause", Doc: "SIGSTOP the leader or a follower, SIGCONT it later",
		Faults: []string{"pause-leader", "pause-follower"},
		Active: [2]time.Duration{time.Second, 5 * time.Second}, Quiet: [2]time.Duration{time.Second, 3 * time.Second}},
	{Name: "partition", Doc: "isolate the leader, isolate a follower, bridge (A-C cut, both reach B); cut or silently stalled links",
		Faults: []string{"isolate-leader", "isolate-follower", "bridge"},
		Active: [2]time.Duration{2 * time.Second, 6 * time.Second}, Quiet: [2]time.Duration{time.Second, 3 * time.Second}},
	{Name: "link", Doc: "one-way loss, flapping partitions, slow links, one stalled link",
		Faults: []string{"oneway", "flap", "slow", "stall-link"},
		Active: [2]time.Duration{2 * time.Second, 6 * time.Second}, Quiet: [2]time.Duration{time.Second, 3 * time.Second}},
	{Name: "lossy-disk", Doc: "faultfs build: unsynced writes (and torn tails) of the segment log and of the Raft log (raft-wal) lost on SIGKILL of one node or all three",
		Faults: []string{"kill-leader", "kill-follower", "kill-all"}, FaultFS: true,
		Active: [2]time.Duration{500 * time.Millisecond, 3 * time.Second}, Quiet: [2]time.Duration{time.Second, 3 * time.Second}},
	{Name: "corrupt", Doc: "bit flip or truncation in a segment file of a stopped follower; detected, then wiped and rejoined",
		Faults: []string{"corrupt"}, ServeArgs: []string{"--segment-bytes", "1048576"},
		Active: [2]time.Duration{time.Second, 2 * time.Second}, Quiet: [2]time.Duration{2 * time.Second, 4 * time.Second}},
	{Name: "bitrot", Doc: "a bit flipped in a stopped node's (the leader's too) sealed segments or Raft log files; detected (refused start, DataLoss, the event checksum stopping the FSM), then wiped and rejoined, or cut off and re-applied",
		Faults: []string{"bitrot"}, ServeArgs: []string{"--segment-bytes", "1048576"},
		Active: [2]time.Duration{time.Second, 2 * time.Second}, Quiet: [2]time.Duration{2 * time.Second, 4 * time.Second}},
	{Name: "snapshot", Doc: "frequent snapshots; a follower partitioned past trailing-logs (InstallSnapshot), wipe-and-rejoin, kills",
		Faults: []string{"isolate-follower-long", "wipe-follower", "kill-leader"}, ServeArgs: snapshotArgs,
		Active: [2]time.Duration{3 * time.Second, 6 * time.Second}, Quiet: [2]time.Duration{time.Second, 3 * time.Second}},
	{Name: "transfer", Doc: "leadership transfers (to a named node or any), mixed with leader kills and pauses",
		Faults: []string{"transfer", "transfer", "transfer-any", "kill-leader", "pause-leader"},
		Active: [2]time.Duration{time.Second, 3 * time.Second}, Quiet: [2]time.Duration{500 * time.Millisecond, 2 * time.Second}},
	{Name: "membership", Doc: "remove a follower or the leader (exit 78, again on its old data), wipe it, add it back as a non-voter, promote it; leader kills",
		Faults: []string{"remove-follower", "remove-leader", "remove-kill", "kill-leader"},
		Active: [2]time.Duration{time.Second, 3 * time.Second}, Quiet: [2]time.Duration{500 * time.Millisecond, 1500 * time.Millisecond},
		Overhead: 2 * time.Second},
	{Name: "fencing", Doc: "training runs re-fenced (StartRun) every 0.4-1.5 s while the replaced writers keep appending as zombies; leader kills, pauses and isolation, a follower caught up through InstallSnapshot or wiped",
		Faults: []string{"kill-leader", "pause-leader", "isolate-leader", "isolate-follower-long", "wipe-follower"}, ServeArgs: snapshotArgs,
		Active: [2]time.Duration{2 * time.Second, 5 * time.Second}, Quiet: [2]time.Duration{time.Second, 2 * time.Second},
		Fencing: true},
	{Name: "disk-full", Doc: "real full disks (a 256 MiB tmpfs per node): a follower's, the leader's, a majority's or all disks filled to just below min-free-bytes (refused at once, NOT_SERVING) or completely (ENOSPC: the node exits and is restarted on its full disk), or a node killed and restarted on its filled disk; healed by deleting the filler, no restart",
		Faults: []string{"disk-low-follower", "disk-low-leader", "disk-low-majority", "disk-low-all", "disk-low-restart",
			"disk-full-follower", "disk-full-leader", "disk-full-majority", "disk-full-all", "disk-full-restart"},
		ServeArgs: snapshotArgs, Disk: &DiskSpec{Size: 256 << 20, MinFree: 64 << 20, Resume: 16 << 20, LowMargin: 4 << 20},
		Active: [2]time.Duration{3 * time.Second, 5 * time.Second}, Quiet: [2]time.Duration{time.Second, 2 * time.Second},
		Overhead: 6 * time.Second},
	{Name: "retention", Doc: "a retention policy (max-bytes 256 KiB on jepsen/) cuts the log every second or so (64 KiB segments) while the leader, a follower or all three are SIGKILLed (faultfs build: unsynced writes lost), the leader isolated, a follower caught up through InstallSnapshot or wiped; from 60% of the run a keeper writes a stream no policy covers, which no cut may pass",
		Faults: []string{"kill-leader", "kill-follower", "kill-all", "isolate-leader", "isolate-follower-long", "wipe-follower"}, ServeArgs: retentionArgs, FaultFS: true,
		Active: [2]time.Duration{2 * time.Second, 5 * time.Second}, Quiet: [2]time.Duration{time.Second, 2 * time.Second},
		Retention: &RetentionSpec{Prefix: "jepsen/", MaxBytes: 256 << 10, Uncovered: "keep/", KeeperFrom: 0.6}},
	{Name: "compaction", Doc: "run compaction and stream deletion (64 KiB segments, a rewrite tick every second) while trainers write typed training runs through the SDK and finish most of them and a deleter deletes streams; the leader, a follower or all three SIGKILLed (faultfs build), the leader isolated, a follower caught up through InstallSnapshot or wiped",
		Faults: []string{"kill-leader", "kill-follower", "kill-all", "isolate-leader", "isolate-follower-long", "wipe-follower"}, ServeArgs: compactionArgs, FaultFS: true,
		Active: [2]time.Duration{2 * time.Second, 5 * time.Second}, Quiet: [2]time.Duration{time.Second, 2 * time.Second},
		Compaction: &CompactionSpec{RunPrefix: "crun/", DelPrefix: "cdel/", Trainers: 3, Keep: defaultKeep}},
	{Name: "tiering", Doc: "cold tiering to a real versitygw (64 KiB segments, at most 128 KiB not tiered, evicted once committed) while the leader or a follower is SIGKILLed or isolated, and, on a schedule of its own, the store is down (versitygw SIGKILLed), slow (300 ms a request), failing (half the requests 500), an evicted segment's object deleted and one's byte flipped; nodes restarted before the final reads (no cached block)",
		Faults: []string{"kill-leader", "kill-follower", "isolate-leader", "isolate-follower"},
		Active: [2]time.Duration{2 * time.Second, 4 * time.Second}, Quiet: [2]time.Duration{time.Second, 2 * time.Second},
		Tiering: &TieringSpec{Faults: []string{"store-down", "store-slow", "store-500", "store-delete", "store-flip"},
			Active: [2]time.Duration{1500 * time.Millisecond, 2500 * time.Millisecond}, Quiet: [2]time.Duration{500 * time.Millisecond, 1500 * time.Millisecond},
			Slow: 300 * time.Millisecond, ErrRate: 0.5}},
}

// FindScenarios resolves a comma-separated list of names, or "all".
func FindScenarios(names string) ([]Scenario, error) {
	if names == "all" {
		return Scenarios, nil
	}
	var out []Scenario
	for _, name := range strings.Split(names, ",") {
		i := slices.IndexFunc(Scenarios, func(s Scenario) bool { return s.Name == strings.TrimSpace(name) })
		if i < 0 {
			return nil, fmt.Errorf("unknown scenario %q (have: %s)", name, ScenarioNames())
		}
		out = append(out, Scenarios[i])
	}
	return out, nil
}

// ScenarioNames lists the scenario names.
func ScenarioNames() string {
	var names []string
	for _, s := range Scenarios {
		names = append(names, s.Name)
	}
	return strings.Join(names, ", ")
}

// Profile is how long each scenario runs.
type Profile struct {
	Name     string
	Duration time.Duration // workload time per scenario: warm-up, faults, cool-down
}

// Profiles: short runs in CI, long is the release check.
var Profiles = map[string]Profile{
	"short": {Name: "short", Duration: 35 * time.Second},
	"long":  {Name: "long", Duration: 5 * time.Minute},
}
