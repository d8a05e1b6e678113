package bench

import (
	"fmt"
	"image/color"
	"math"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Marker is a labelled instant on a timeline plot, e.g. a leader kill.
// Markers with the same label share a legend entry; Secondary ones are
// drawn grey and dotted (e.g. the restart of a killed node).
type Marker struct {
	At        time.Duration // since the timeline's start
	Label     string
	Secondary bool
}

// PlotTimeline draws events/s per bucket of tl over time, with vertical
// lines at the markers, to path (.png or .svg by extension).
func PlotTimeline(path, title string, tl *Timeline, markers ...Marker) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "seconds since start"
	p.Y.Label.Text = fmt.Sprintf("events/s (%v buckets)", tl.Width())
	rates := tl.Rates()
	pts := make(plotter.XYs, len(rates))
	peak := 1.0
	for i, r := range rates {
		pts[i].X = (time.Duration(i) * tl.Width()).Seconds()
		pts[i].Y = r
		peak = math.Max(peak, r)
	}
	line, err := plotter.NewLine(pts)
	if err != nil {
		return err
	}
	line.Color = plotutil.Color(2)
	p.Add(line, plotter.NewGrid())
	p.Legend.Add("acknowledged events/s", line)
	seen := map[string]bool{}
	for _, m := range markers {
		x := m.At.Seconds()
		ml, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: peak * 1.05}})
		if err != nil {
			return err
		}
		ml.Color = color.RGBA{R: 200, A: 255}
		ml.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		ml.Width = vg.Points(1.5)
		if m.Secondary {
			ml.Color = color.Gray{Y: 120}
			ml.Dashes = []vg.Length{vg.Points(1), vg.Points(2)}
		}
		p.Add(ml)
		if !seen[m.Label] {
			seen[m.Label] = true
			p.Legend.Add(m.Label, ml)
		}
	}
	p.Y.Min = 0
	p.Legend.Top = true
	return p.Save(8*vg.Inch, 4*vg.Inch, path)
}

// PlotLatencyCDF draws the latency distribution of each named histogram
// as a CDF on a logarithmic latency axis, to path (.png or .svg).
func PlotLatencyCDF(path, title string, names []string, hists []*Histogram) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "latency (ms, log scale)"
	p.Y.Label.Text = "fraction of operations <= latency"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	drawn := 0
	for i, h := range hists {
		vals, fr := h.CDF()
		if len(vals) == 0 {
			continue
		}
		pts := make(plotter.XYs, 0, len(vals))
		for j, v := range vals {
			pts = append(pts, plotter.XY{X: math.Max(Ms(v), 1e-3), Y: fr[j]})
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s (p50 %.2f, p99 %.2f ms)", names[i], Ms(h.Quantile(0.5)), Ms(h.Quantile(0.99))), l)
		drawn++
	}
	if drawn == 0 {
		return fmt.Errorf("bench: no latencies to plot for %s", path)
	}
	// Leave room left of the fastest curve for the legend.
	lo := math.Inf(1)
	for _, h := range hists {
		if vals, _ := h.CDF(); len(vals) > 0 {
			lo = math.Min(lo, math.Max(Ms(vals[0]), 1e-3))
		}
	}
	p.X.Min = lo / 1000
	p.Y.Min, p.Y.Max = 0, 1
	p.Legend.Left = true
	p.Legend.Top = true
	p.Legend.XOffs = vg.Points(5)
	p.Legend.YOffs = -vg.Points(15)
	return p.Save(8*vg.Inch, 4.5*vg.Inch, path)
}
