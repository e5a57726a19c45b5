//! Charts for the notebooks and the CLI, drawn with plotters.
//!
//! A [`Figure`] keeps the data and the labels; it is rendered on demand as SVG (shown inline in
//! a notebook, saved with [`Figure::save_svg`]) or PNG ([`Figure::save_png`]). Every chart has a
//! title and labelled axes. Text is drawn with the DejaVu Sans font bundled in `assets/`, so no
//! system font is needed.

use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Registers the bundled font once per process (each notebook cell links its own copy of the
/// library, so the registration must be idempotent).
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        let registered = plotters::style::register_font(FONT, FontStyle::Normal, bytes);
        assert!(
            registered.is_ok(),
            "the bundled font is a valid TrueType file"
        );
    });
}

/// A named series of (x, y) points.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series with a copy of `points`. (Taking a slice rather than a `Vec` lets a notebook cell
    /// end with a chart of its own variables: evcxr keeps a cell's variables for later cells, and
    /// cannot if the chart has consumed them.)
    pub fn new(name: impl Into<String>, points: &[(f64, f64)]) -> Self {
        Self {
            name: name.into(),
            points: points.to_vec(),
        }
    }
}

#[derive(Clone, Debug)]
enum Chart {
    Lines {
        series: Vec<Series>,
        log_x: bool,
        log_y: bool,
    },
    Histogram {
        values: Vec<f64>,
        bins: usize,
    },
    Bars {
        labels: Vec<String>,
        values: Vec<f64>,
    },
}

/// A chart with a title and axis labels, rendered on demand.
#[derive(Clone, Debug)]
pub struct Figure {
    title: String,
    x_label: String,
    y_label: String,
    chart: Chart,
    pub width: u32,
    pub height: u32,
}

impl Figure {
    fn new(title: &str, x_label: &str, y_label: &str, chart: Chart) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            chart,
            width: 720,
            height: 400,
        }
    }

    /// One or more line series; `log_x`/`log_y` choose logarithmic axes (for a Zipf plot, both).
    pub fn lines(
        title: &str,
        x_label: &str,
        y_label: &str,
        series: Vec<Series>,
        log_x: bool,
        log_y: bool,
    ) -> Self {
        Self::new(
            title,
            x_label,
            y_label,
            Chart::Lines {
                series,
                log_x,
                log_y,
            },
        )
    }

    /// A histogram of `values` in `bins` equal-width bins.
    pub fn histogram(
        title: &str,
        x_label: &str,
        y_label: &str,
        values: &[f64],
        bins: usize,
    ) -> Self {
        Self::new(
            title,
            x_label,
            y_label,
            Chart::Histogram {
                values: values.to_vec(),
                bins: bins.max(1),
            },
        )
    }

    /// One bar per label (e.g. the most frequent words).
    pub fn bars(
        title: &str,
        x_label: &str,
        y_label: &str,
        labels: &[String],
        values: &[f64],
    ) -> Self {
        Self::new(
            title,
            x_label,
            y_label,
            Chart::Bars {
                labels: labels.to_vec(),
                values: values.to_vec(),
            },
        )
    }

    /// The chart as an SVG document.
    pub fn to_svg(&self) -> Result<String> {
        let mut svg = String::new();
        {
            let root =
                SVGBackend::with_string(&mut svg, (self.width, self.height)).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(plot_err)?;
        }
        Ok(svg)
    }

    pub fn save_svg(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_svg()?).map_err(|e| Error::io(path, e))
    }

    pub fn save_png(&self, path: &Path) -> Result<()> {
        let root = BitMapBackend::new(path, (self.width, self.height)).into_drawing_area();
        self.draw(&root)?;
        root.present()
            .map_err(|e| Error::data(path, format!("cannot write the PNG: {e}")))
    }

    /// Shows the chart inline in a Jupyter notebook run by evcxr.
    pub fn evcxr_display(&self) {
        match self.to_svg() {
            Ok(svg) => println!("EVCXR_BEGIN_CONTENT image/svg+xml\n{svg}\nEVCXR_END_CONTENT"),
            Err(e) => eprintln!("{e}"),
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        register_font();
        root.fill(&WHITE).map_err(plot_err)?;
        match &self.chart {
            Chart::Lines {
                series,
                log_x,
                log_y,
            } => self.draw_lines(root, series, *log_x, *log_y),
            Chart::Histogram { values, bins } => self.draw_histogram(root, values, *bins),
            Chart::Bars { labels, values } => self.draw_bars(root, labels, values),
        }
    }

    fn draw_lines<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        series: &[Series],
        log_x: bool,
        log_y: bool,
    ) -> Result<()> {
        let points = || {
            series
                .iter()
                .flat_map(|s| &s.points)
                .filter(|(x, y)| x.is_finite() && y.is_finite())
        };
        let range = |values: Vec<f64>, log: bool| {
            let values: Vec<f64> = values.into_iter().filter(|v| !log || *v > 0.0).collect();
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            match (lo.is_finite(), lo < hi) {
                (true, true) => lo..hi,
                (true, false) => lo * 0.9 - 1e-9..hi * 1.1 + 1e-9,
                _ => 1.0..10.0,
            }
        };
        let x = range(points().map(|p| p.0).collect(), log_x);
        let y = range(points().map(|p| p.1).collect(), log_y);
        match (log_x, log_y) {
            (false, false) => self.draw_lines_on(root, series, x, y),
            (true, false) => self.draw_lines_on(root, series, x.log_scale(), y),
            (false, true) => self.draw_lines_on(root, series, x, y.log_scale()),
            (true, true) => self.draw_lines_on(root, series, x.log_scale(), y.log_scale()),
        }
    }

    fn draw_lines_on<DB, X, Y>(
        &self,
        root: &DrawingArea<DB, Shift>,
        series: &[Series],
        x: X,
        y: Y,
    ) -> Result<()>
    where
        DB: DrawingBackend,
        X: AsRangedCoord<Value = f64>,
        Y: AsRangedCoord<Value = f64>,
        X::CoordDescType: ValueFormatter<f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let mut chart = self
            .builder(root)
            .build_cartesian_2d(x, y)
            .map_err(plot_err)?;
        self.mesh(&mut chart)?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        if series.len() > 1 || series.first().is_some_and(|s| !s.name.is_empty()) {
            chart
                .configure_series_labels()
                .label_font((FONT, 14))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(plot_err)?;
        }
        Ok(())
    }

    fn draw_histogram<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        values: &[f64],
        bins: usize,
    ) -> Result<()> {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() && hi > lo {
            (lo, hi)
        } else {
            (0.0, 1.0)
        };
        let width = (hi - lo) / bins as f64;
        let mut counts = vec![0u64; bins];
        for v in values {
            counts[(((v - lo) / width) as usize).min(bins - 1)] += 1;
        }
        let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.05;
        let mut chart = self
            .builder(root)
            .build_cartesian_2d(lo..hi, 0.0..top)
            .map_err(plot_err)?;
        self.mesh(&mut chart)?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                let x0 = lo + i as f64 * width;
                Rectangle::new(
                    [(x0, 0.0), (x0 + width, c as f64)],
                    COLORS[0].mix(0.8).filled(),
                )
            }))
            .map_err(plot_err)?;
        Ok(())
    }

    fn draw_bars<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        labels: &[String],
        values: &[f64],
    ) -> Result<()> {
        let n = labels.len().min(values.len());
        let top = values.iter().copied().fold(0.0, f64::max).max(1e-9) * 1.05;
        let mut chart = self
            .builder(root)
            .build_cartesian_2d((0..n).into_segmented(), 0.0..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .x_labels(n)
            .x_label_formatter(&|seg| match seg {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(values.iter().take(n).enumerate().map(|(i, &v)| {
                Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), v),
                    ],
                    COLORS[0].mix(0.8).filled(),
                )
            }))
            .map_err(plot_err)?;
        Ok(())
    }

    fn builder<'a, 'b, DB: DrawingBackend>(
        &self,
        root: &'a DrawingArea<DB, Shift>,
    ) -> ChartBuilder<'a, 'b, DB> {
        let mut builder = ChartBuilder::on(root);
        builder
            .caption(self.title.as_str(), (FONT, 20))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(72);
        builder
    }

    fn mesh<DB, X, Y>(&self, chart: &mut ChartContext<'_, DB, Cartesian2d<X, Y>>) -> Result<()>
    where
        DB: DrawingBackend,
        X: Ranged + ValueFormatter<X::ValueType>,
        Y: Ranged + ValueFormatter<Y::ValueType>,
    {
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .light_line_style(BLACK.mix(0.05))
            .draw()
            .map_err(plot_err)
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> Error {
    Error::Invalid(format!("drawing the chart failed: {e:?}"))
}
