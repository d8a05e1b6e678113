package jepsen

import (
	"slices"
	"sort"
	"time"
)

// AppendStats counts appends by outcome.
type AppendStats struct {
	Attempted  int `json:"attempted"`
	OK         int `json:"ok"`
	Failed     int `json:"failed"`
	Unknown    int `json:"unknown"`
	Recovered  int `json:"recovered"` // OK after an attempt with an unknown outcome
	Events     int `json:"events_ok"`
	Idempotent int `json:"idempotent_attempted"`
	// Retries counts attempts beyond the first.
	Retries int `json:"retries"`
	// Fenced counts failed appends refused FENCED (fencing workload).
	Fenced int `json:"fenced,omitempty"`
	// DiskFull counts failed appends refused DISK_FULL (disk-full).
	DiskFull int `json:"disk_full,omitempty"`
}

// ReadStats counts reads and subscription deliveries.
type ReadStats struct {
	Reads          int  `json:"reads"`
	ReadsOK        int  `json:"reads_ok"`
	Linearizable   int  `json:"linearizable_ok"`
	ReadYourWrites int  `json:"read_your_writes_ok"`
	EventsRead     int  `json:"events_read"`
	Delivered      int  `json:"subscription_deliveries"`
	Resumes        int  `json:"subscription_resumes"`
	Emulated       bool `json:"subscriptions_emulated"`
}

// PhaseStats is throughput and latency of acknowledged appends in one
// phase of the run.
type PhaseStats struct {
	Phase     string        `json:"phase"`
	From      time.Duration `json:"from_ns"`
	To        time.Duration `json:"to_ns"`
	OK        int           `json:"ok"`
	PerSecond float64       `json:"ok_per_second"`
	P50       time.Duration `json:"p50_ns"`
	P99       time.Duration `json:"p99_ns"`
}

// Window is a time interval of the run.
type Window struct {
	From time.Duration `json:"from_ns"`
	To   time.Duration `json:"to_ns"`
}

// Len is the window's length.
func (w Window) Len() time.Duration { return w.To - w.From }

func appendStats(h *History) AppendStats {
	var s AppendStats
	for _, a := range h.Appends {
		s.Attempted++
		s.Retries += max(a.Attempts-1, 0)
		if a.Idempotent {
			s.Idempotent++
		}
		switch a.Outcome {
		case OK:
			s.OK++
			s.Events += len(a.Values)
			if a.Recovered {
				s.Recovered++
			}
		case Fail:
			s.Failed++
			if a.Fenced {
				s.Fenced++
			}
			if a.DiskFull {
				s.DiskFull++
			}
		default:
			s.Unknown++
		}
	}
	return s
}

func readStats(h *History) ReadStats {
	var s ReadStats
	for _, r := range h.Reads {
		s.Reads++
		if r.Outcome != OK {
			continue
		}
		s.ReadsOK++
		s.EventsRead += len(r.Values)
		if r.Linearizable {
			s.Linearizable++
		}
		if r.MinNext != 0 {
			s.ReadYourWrites++
		}
	}
	for _, sub := range h.Subs {
		s.Delivered += len(sub.Deliveries)
		s.Resumes += len(sub.Resumes)
		s.Emulated = s.Emulated || sub.Emulated
	}
	return s
}

// phaseStats measures acknowledged appends completed in [from, to).
func phaseStats(h *History, name string, from, to time.Duration) PhaseStats {
	p := PhaseStats{Phase: name, From: from, To: to}
	var lat []time.Duration
	for _, a := range h.Appends {
		if a.Outcome == OK && a.Process != "final" && a.Complete >= from && a.Complete < to {
			lat = append(lat, a.Complete-a.Invoke)
		}
	}
	p.OK = len(lat)
	if to > from {
		p.PerSecond = float64(p.OK) / (to - from).Seconds()
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		p.P50 = lat[len(lat)*50/100]
		p.P99 = lat[min(len(lat)*99/100, len(lat)-1)]
	}
	return p
}

// okCompletions returns the completion times of acknowledged workload
// appends, sorted.
func okCompletions(h *History) []time.Duration {
	var ts []time.Duration
	for _, a := range h.Appends {
		if a.Outcome == OK && a.Process != "final" {
			ts = append(ts, a.Complete)
		}
	}
	slices.Sort(ts)
	return ts
}

// longestUnavailable is the longest stretch of [from, to) in which no
// append was acknowledged.
func longestUnavailable(h *History, from, to time.Duration) Window {
	var best Window
	prev := from
	for _, t := range append(okCompletions(h), to) {
		if t < from {
			continue
		}
		t = min(t, to)
		if t-prev > best.Len() {
			best = Window{prev, t}
		}
		prev = t
		if t >= to {
			break
		}
	}
	return best
}

// HealRecovery is how long after a fault was healed the next append was
// acknowledged.
type HealRecovery struct {
	Fault  string        `json:"fault"`
	Healed time.Duration `json:"healed_ns"`
	After  time.Duration `json:"first_ok_after_ns"` // -1: none before the run ended
}

func healRecoveries(h *History) []HealRecovery {
	ts := okCompletions(h)
	var out []HealRecovery
	for _, f := range h.Faults {
		r := HealRecovery{Fault: f.Kind, Healed: f.End, After: -1}
		if i := sort.Search(len(ts), func(i int) bool { return ts[i] >= f.End }); i < len(ts) {
			r.After = ts[i] - f.End
		}
		out = append(out, r)
	}
	return out
}
