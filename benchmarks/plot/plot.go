package plot

import (
	"fmt"
	"image/color"
	"math"
	"time"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Latencies is one CDF curve: sorted latencies of successful requests.
type Latencies struct {
	Name   string
	Sorted []time.Duration
}

// maxPoints caps the points drawn per curve; the CDF is sampled evenly in rank.
const maxPoints = 2000

// CDF writes a latency CDF (x: latency in µs, log scale; y: fraction of requests) to path.
func CDF(path, title string, curves []Latencies) error {
	p := gplot.New()
	p.Title.Text = title
	p.X.Label.Text = "latency (µs, log scale)"
	p.Y.Label.Text = "fraction of requests ≤ latency"
	p.X.Scale = gplot.LogScale{}
	p.X.Tick.Marker = gplot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	p.Add(plotter.NewGrid())
	for i, c := range curves {
		n := len(c.Sorted)
		if n == 0 {
			continue
		}
		step := max(1, n/maxPoints)
		var xys plotter.XYs
		for j := 0; j < n; j += step {
			xys = append(xys, plotter.XY{X: math.Max(1, float64(c.Sorted[j].Nanoseconds())/1e3), Y: float64(j+1) / float64(n)})
		}
		xys = append(xys, plotter.XY{X: math.Max(1, float64(c.Sorted[n-1].Nanoseconds())/1e3), Y: 1})
		l, err := plotter.NewLine(xys)
		if err != nil {
			return err
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(c.Name, l)
	}
	p.Legend.Top = false
	p.Legend.Left = false
	p.Legend.XOffs = -vg.Points(5)
	p.Legend.YOffs = vg.Points(20)
	return save(p, path)
}

// Series is one line of XY points.
type Series struct {
	Name string
	X, Y []float64
}

// Lines writes line charts with point markers to path. logY draws y on a log scale (values ≤ 0
// are raised to a small positive floor so they stay visible).
func Lines(path, title, xLabel, yLabel string, series []Series, logY bool) error {
	p := gplot.New()
	p.Title.Text = title
	p.X.Label.Text = xLabel
	p.Y.Label.Text = yLabel
	p.Add(plotter.NewGrid())
	if logY {
		p.Y.Scale = gplot.LogScale{}
		p.Y.Tick.Marker = gplot.LogTicks{Prec: -1}
	}
	for i, s := range series {
		if len(s.X) != len(s.Y) {
			return fmt.Errorf("plot %s: series %s has %d x and %d y", path, s.Name, len(s.X), len(s.Y))
		}
		xys := make(plotter.XYs, len(s.X))
		for j := range s.X {
			y := s.Y[j]
			if logY && y <= 0 {
				y = 1
			}
			xys[j] = plotter.XY{X: s.X[j], Y: y}
		}
		l, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.5)
		pts.Color = plotutil.Color(i)
		pts.Shape = plotutil.Shape(i)
		p.Add(l, pts)
		p.Legend.Add(s.Name, l, pts)
	}
	p.Legend.Top = true
	p.Legend.Left = true
	if logY {
		p.Y.Max *= 8 // headroom above the data for the legend
	} else {
		p.Y.Max *= 1.3
	}
	return save(p, path)
}

// Bars writes a grouped bar chart: one group per label, one bar per series.
func Bars(path, title, yLabel string, labels []string, series []Series) error {
	p := gplot.New()
	p.Title.Text = title
	p.Y.Label.Text = yLabel
	p.Add(plotter.NewGrid())
	w := vg.Points(float64(min(40, 240/max(1, len(series)))))
	for i, s := range series {
		vals := make(plotter.Values, len(s.Y))
		copy(vals, s.Y)
		b, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		b.Color = plotutil.Color(i)
		b.LineStyle.Color = color.Black
		b.Offset = vg.Length(float64(i)-float64(len(series)-1)/2) * w
		p.Add(b)
		p.Legend.Add(s.Name, b)
	}
	p.Legend.Top = true
	p.NominalX(labels...)
	return save(p, path)
}

func save(p *gplot.Plot, path string) error {
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}

// Scatter writes a scatter plot, one point style per series; logY as in Lines.
func Scatter(path, title, xLabel, yLabel string, series []Series, logY bool) error {
	p := gplot.New()
	p.Title.Text = title
	p.X.Label.Text = xLabel
	p.Y.Label.Text = yLabel
	p.Add(plotter.NewGrid())
	if logY {
		p.Y.Scale = gplot.LogScale{}
		p.Y.Tick.Marker = gplot.LogTicks{Prec: -1}
	}
	for i, s := range series {
		if len(s.X) == 0 {
			continue
		}
		xys := make(plotter.XYs, len(s.X))
		for j := range s.X {
			y := s.Y[j]
			if logY && y <= 0 {
				y = 1e-3
			}
			xys[j] = plotter.XY{X: s.X[j], Y: y}
		}
		sc, err := plotter.NewScatter(xys)
		if err != nil {
			return err
		}
		sc.Color = plotutil.Color(i)
		sc.Shape = plotutil.Shape(i)
		sc.Radius = vg.Points(2)
		p.Add(sc)
		p.Legend.Add(s.Name, sc)
	}
	p.Legend.Top = true
	if logY {
		p.Y.Max *= 8
	}
	return save(p, path)
}
