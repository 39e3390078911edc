package plot

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"strconv"
	"time"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Latencies is one CDF curve: sorted latencies of successful requests.
type Latencies struct {
	Name   string
	Sorted []time.Duration
}

// maxPoints caps the points drawn per curve; the CDF is sampled evenly in rank.
const maxPoints = 2000

// cdfMarks are the quantiles marked with a point on each CDF curve.
var cdfMarks = []float64{0.5, 0.9, 0.99, 0.999}

// CDF writes a latency CDF (x: latency in µs, log scale; y: fraction of requests) to path. Each
// curve is a line with points at p50, p90, p99 and p99.9, in its path's colour.
func CDF(path, title string, curves []Latencies) error {
	p := newPlot(title+" (points: p50, p90, p99, p99.9)", "latency (µs, log scale)", "fraction of requests ≤ latency")
	p.X.Scale = gplot.LogScale{}
	p.X.Tick.Marker = logTicks{}
	p.Y.Tick.Marker = gplot.TickerFunc(func(_, _ float64) []gplot.Tick { return fractionTicks() })
	p.Y.Min, p.Y.Max = 0, 1
	leg := newLegend()
	for i, c := range curves {
		n := len(c.Sorted)
		if n == 0 {
			continue
		}
		us := func(j int) float64 { return math.Max(1, float64(c.Sorted[j].Nanoseconds())/1e3) }
		step := max(1, n/maxPoints)
		var xys plotter.XYs
		for j := 0; j < n; j += step {
			xys = append(xys, plotter.XY{X: us(j), Y: float64(j+1) / float64(n)})
		}
		xys = append(xys, plotter.XY{X: us(n - 1), Y: 1})
		l, err := plotter.NewLine(xys)
		if err != nil {
			return err
		}
		col := Color(c.Name, i)
		l.Color, l.Width = col, vg.Points(2)
		var marks plotter.XYs
		for _, q := range cdfMarks {
			j := min(n-1, int(math.Ceil(q*float64(n)))-1)
			marks = append(marks, plotter.XY{X: us(max(0, j)), Y: q})
		}
		pts, err := plotter.NewScatter(marks)
		if err != nil {
			return err
		}
		pts.Color, pts.Shape, pts.Radius = col, draw.CircleGlyph{}, vg.Points(3.5)
		p.Add(l, pts)
		leg.Add(c.Name, l, pts)
	}
	return save(p, leg, path)
}

// Series is one line of XY points.
type Series struct {
	Name string
	X, Y []float64
}

// Lines writes line charts with a point at each value to path. logY draws y on a log scale
// (values ≤ 0 are raised to a small positive floor so they stay visible). A series is coloured
// by the path its name mentions (Color) and dashed by the quantile it names (p99, p99.9, ...),
// so that one colour is one path in every plot.
func Lines(path, title, xLabel, yLabel string, series []Series, logY bool) error {
	p := newPlot(title, xLabel, yLabel)
	p.X.Tick.Marker = linearTicks{}
	p.Y.Tick.Marker = linearTicks{}
	if logY {
		p.Y.Scale = gplot.LogScale{}
		p.Y.Tick.Marker = logTicks{}
	}
	leg := newLegend()
	for i, s := range series {
		if len(s.X) != len(s.Y) {
			return fmt.Errorf("plot %s: series %s has %d x and %d y", path, s.Name, len(s.X), len(s.Y))
		}
		if len(s.X) == 0 {
			continue
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
		col := Color(s.Name, i)
		l.Color, l.Width, l.Dashes = col, vg.Points(2), quantileDashes(s.Name)
		pts.Color, pts.Shape, pts.Radius = col, quantileGlyph(s.Name, i), vg.Points(3.5)
		p.Add(l, pts)
		leg.Add(s.Name, l, pts)
	}
	padRange(p, logY)
	return save(p, leg, path)
}

// Quantiles writes, for each series (a path), its latency at each of the quantiles named by
// labels (x, in that order) on a log y axis: points joined by lines, one colour per path.
func Quantiles(path, title, yLabel string, labels []string, series []Series) error {
	p := newPlot(title, "quantile", yLabel)
	p.Y.Scale = gplot.LogScale{}
	p.Y.Tick.Marker = logTicks{}
	leg := newLegend()
	for i, s := range series {
		if len(s.Y) != len(labels) {
			return fmt.Errorf("plot %s: series %s has %d values for %d quantiles", path, s.Name, len(s.Y), len(labels))
		}
		xys := make(plotter.XYs, len(s.Y))
		for j, y := range s.Y {
			xys[j] = plotter.XY{X: float64(j), Y: math.Max(y, 1)}
		}
		l, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		col := Color(s.Name, i)
		l.Color, l.Width = col, vg.Points(2)
		pts.Color, pts.Shape, pts.Radius = col, draw.CircleGlyph{}, vg.Points(3.5)
		p.Add(l, pts)
		leg.Add(s.Name, l, pts)
	}
	p.NominalX(labels...)
	p.X.Min, p.X.Max = -0.3, float64(len(labels))-0.7
	padRange(p, true)
	return save(p, leg, path)
}

// Bars writes a grouped bar chart of series (e.g. download, upload) by labels (the paths: direct,
// local, ...): one group per series, one bar per path in the path's colour, its value above it.
func Bars(path, title, yLabel string, labels []string, series []Series) error {
	p := newPlot(title, "", yLabel)
	p.Y.Tick.Marker = linearTicks{}
	leg := newLegend()
	groups := make([]string, len(series))
	for i, s := range series {
		groups[i] = s.Name
		if len(s.Y) != len(labels) {
			return fmt.Errorf("plot %s: series %s has %d values for %d labels", path, s.Name, len(s.Y), len(labels))
		}
	}
	w := vg.Points(float64(min(48, 420/max(1, len(labels)*len(series)))))
	for j, label := range labels {
		vals := make(plotter.Values, len(series))
		var xys plotter.XYs
		var texts []string
		for i, s := range series {
			vals[i] = s.Y[j]
			xys = append(xys, plotter.XY{X: float64(i), Y: s.Y[j]})
			texts = append(texts, strconv.FormatFloat(s.Y[j], 'f', 0, 64))
		}
		b, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		b.Color = Color(label, j)
		b.LineStyle.Color = color.Black
		b.LineStyle.Width = vg.Points(0.5)
		b.Offset = vg.Length(float64(j)-float64(len(labels)-1)/2) * w
		values, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
		if err != nil {
			return err
		}
		values.Offset = vg.Point{X: b.Offset - w/2 + vg.Points(2), Y: vg.Points(3)}
		for k := range values.TextStyle {
			values.TextStyle[k].Font.Size = vg.Points(9)
		}
		p.Add(b, values)
		leg.Add(label, b)
	}
	p.NominalX(groups...)
	p.Y.Min = 0
	p.Y.Max *= 1.12 // room for the values above the bars
	return save(p, leg, path)
}

// Scatter writes a scatter plot, one colour and point style per series (coloured by name:
// succeeded green, failed vermillion); logY as in Lines.
func Scatter(path, title, xLabel, yLabel string, series []Series, logY bool) error {
	p := newPlot(title, xLabel, yLabel)
	p.X.Tick.Marker = linearTicks{}
	p.Y.Tick.Marker = linearTicks{}
	if logY {
		p.Y.Scale = gplot.LogScale{}
		p.Y.Tick.Marker = logTicks{}
	}
	leg := newLegend()
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
		sc.Color = Color(s.Name, i)
		sc.Shape = []draw.GlyphDrawer{draw.CircleGlyph{}, draw.CrossGlyph{}, draw.TriangleGlyph{}, draw.SquareGlyph{}}[i%4]
		sc.Radius = vg.Points(2.5)
		p.Add(sc)
		leg.Add(fmt.Sprintf("%s (%d)", s.Name, len(s.X)), sc)
	}
	padRange(p, logY)
	return save(p, leg, path)
}

func newPlot(title, xLabel, yLabel string) *gplot.Plot {
	p := gplot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(14)
	p.Title.Padding = vg.Points(10)
	p.X.Label.Text = xLabel
	p.Y.Label.Text = yLabel
	for _, a := range []*gplot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font.Size = vg.Points(12)
		a.Tick.Label.Font.Size = vg.Points(11)
	}
	g := plotter.NewGrid()
	g.Vertical.Color = color.Gray{Y: 205}
	g.Horizontal.Color = color.Gray{Y: 205}
	p.Add(g)
	return p
}

// padRange leaves a little room above the data, and starts a linear y axis at 0.
func padRange(p *gplot.Plot, logY bool) {
	if logY {
		p.Y.Min /= 1.3
		p.Y.Max *= 1.3
		return
	}
	if p.Y.Min > 0 { // measurements read against zero
		p.Y.Min = 0
	}
	p.Y.Max += 0.08 * (p.Y.Max - p.Y.Min)
	if p.Y.Max == p.Y.Min {
		p.Y.Max = p.Y.Min + 1
	}
	if p.X.Max == p.X.Min { // one point: give it a visible axis around it
		p.X.Min, p.X.Max = p.X.Min*0.5, p.X.Max*1.5+1
	}
}

func newLegend() *gplot.Legend {
	l := gplot.NewLegend()
	l.Top, l.Left = true, true
	l.TextStyle.Font.Size = vg.Points(11)
	l.Padding = vg.Points(4)
	l.ThumbnailWidth = vg.Points(28)
	return &l
}

// Size of every figure, legend included.
const (
	width  = 10 * vg.Inch
	height = 5.5 * vg.Inch
)

// save draws p with leg to its right, outside the data, and writes a PNG to path.
func save(p *gplot.Plot, leg *gplot.Legend, path string) error {
	img := vgimg.New(width, height)
	dc := draw.New(img)
	legendWidth := leg.Rectangle(dc).Size().X
	if legendWidth > 0 {
		legendWidth += vg.Points(16)
	}
	p.Draw(draw.Crop(dc, 0, -legendWidth, 0, 0))
	if legendWidth > 0 {
		leg.Draw(draw.Crop(dc, width-legendWidth+vg.Points(8), 0, 0, -vg.Points(40)))
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return f.Close()
}
