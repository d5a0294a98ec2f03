//! Plain SVG charts for benchmark results (no fonts or native libraries needed to render).

use std::fmt::Write;

/// One bar series of a grouped bar chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// One value per category (`None`: not measured).
    pub values: Vec<Option<f64>>,
}

const PALETTE: [&str; 6] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];

/// An axis value with as many decimals as its tick step needs (0.5 steps show "1.5", not "2").
fn tick_label(value: f64, step: f64) -> String {
    let decimals = (0..3).find(|&d| {
        let scaled = step * 10f64.powi(d);
        (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
    });
    format!("{value:.*}", decimals.unwrap_or(3) as usize)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The plot area of a chart: where values land.
struct Frame {
    left: f64,
    top: f64,
    plot_w: f64,
    plot_h: f64,
    top_value: f64,
}

impl Frame {
    const WIDTH: f64 = 760.0;
    const HEIGHT: f64 = 420.0;

    fn new(top_value: f64) -> Frame {
        let (left, right, top, bottom) = (70.0, 180.0, 40.0, 50.0);
        Frame { left, top, plot_w: Self::WIDTH - left - right, plot_h: Self::HEIGHT - top - bottom, top_value }
    }

    fn y(&self, value: f64) -> f64 {
        self.top + self.plot_h * (1.0 - value.max(0.0) / self.top_value)
    }

    /// The document, title, horizontal grid with its values, and the y axis label.
    fn open(&self, title: &str, y_label: &str) -> String {
        let (width, height) = (Self::WIDTH, Self::HEIGHT);
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
            width / 2.0,
            escape(title)
        );
        for tick in 0..=5 {
            let value = self.top_value * tick as f64 / 5.0;
            let _ = writeln!(
                svg,
                r##"<line x1="{}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                self.left,
                self.left + self.plot_w,
                self.left - 6.0,
                self.y(value) + 4.0,
                tick_label(value, self.top_value / 5.0),
                y = self.y(value)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            self.top + self.plot_h / 2.0,
            escape(y_label)
        );
        svg
    }

    /// The x axis line, the legend, and the end of the document.
    fn close(&self, mut svg: String, names: impl Iterator<Item = String>) -> String {
        let baseline = self.top + self.plot_h;
        let _ = writeln!(
            svg,
            r##"<line x1="{}" x2="{}" y1="{baseline}" y2="{baseline}" stroke="#333"/>"##,
            self.left,
            self.left + self.plot_w
        );
        for (s, name) in names.enumerate() {
            let ly = self.top + 10.0 + 20.0 * s as f64;
            let lx = self.left + self.plot_w + 15.0;
            let _ = writeln!(
                svg,
                r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
                ly - 10.0,
                PALETTE[s % PALETTE.len()],
                lx + 18.0,
                ly,
                escape(&name)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// A grouped bar chart: one group per category, one bar per series, values on a linear axis
/// from 0 to the largest value (at least `min_top`).
pub fn grouped_bars(title: &str, y_label: &str, categories: &[String], series: &[Series], min_top: f64) -> String {
    let max = series.iter().flat_map(|s| s.values.iter().flatten()).fold(min_top, |a, &b| a.max(b));
    let frame = Frame::new(nice_ceiling(max));
    let mut svg = frame.open(title, y_label);
    let group_w = frame.plot_w / categories.len().max(1) as f64;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        let x0 = frame.left + group_w * c as f64 + group_w * 0.1;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            frame.left + group_w * (c as f64 + 0.5),
            frame.top + frame.plot_h + 18.0,
            escape(category)
        );
        for (s, one) in series.iter().enumerate() {
            let Some(value) = one.values.get(c).copied().flatten() else {
                continue;
            };
            let x = x0 + bar_w * s as f64;
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {value:.1}</title></rect>"#,
                frame.y(value),
                bar_w * 0.92,
                (frame.top + frame.plot_h - frame.y(value)).max(0.0),
                PALETTE[s % PALETTE.len()],
                escape(&one.name)
            );
        }
    }
    frame.close(svg, series.iter().map(|s| s.name.clone()))
}

/// A line chart: each series a polyline of `(x, y)` points, both axes linear from 0. A point
/// whose `y` is not finite (NaN) breaks its series' line there, e.g. between rounds.
pub fn lines(title: &str, x_label: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let points = || series.iter().flat_map(|(_, points)| points.iter().filter(|(_, y)| y.is_finite()));
    let frame = Frame::new(nice_ceiling(points().fold(1.0, |a, &(_, y)| a.max(y))));
    let x_top = nice_ceiling(points().fold(1.0, |a, &(x, _)| a.max(x)));
    let x = |value: f64| frame.left + frame.plot_w * value / x_top;
    let mut svg = frame.open(title, y_label);
    for tick in 0..=5 {
        let value = x_top * tick as f64 / 5.0;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(value),
            frame.top + frame.plot_h + 18.0,
            tick_label(value, x_top / 5.0)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        frame.left + frame.plot_w / 2.0,
        frame.top + frame.plot_h + 38.0,
        escape(x_label)
    );
    for (s, (name, points)) in series.iter().enumerate() {
        // An empty series still gets its (empty) polyline, so every series is in the chart.
        let mut pieces = points.split(|(_, y)| !y.is_finite()).filter(|piece| !piece.is_empty()).peekable();
        let empty: &[(f64, f64)] = &[];
        let pieces: Vec<&[(f64, f64)]> = if pieces.peek().is_none() { vec![empty] } else { pieces.collect() };
        for piece in pieces {
            let path: Vec<String> = piece.iter().map(|&(px, py)| format!("{:.1},{:.1}", x(px), frame.y(py))).collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#,
                PALETTE[s % PALETTE.len()],
                path.join(" "),
                escape(name)
            );
        }
    }
    frame.close(svg, series.iter().map(|(name, _)| name.clone()))
}

fn nice_ceiling(value: f64) -> f64 {
    let magnitude = 10f64.powf(value.max(1e-9).log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if value <= step * magnitude {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_bar_per_value_and_escapes_text() {
        let svg = grouped_bars(
            "a < b",
            "%",
            &["x".into(), "y".into()],
            &[Series { name: "s&t".into(), values: vec![Some(10.0), None] }],
            1.0,
        );
        assert_eq!(svg.matches("<rect x=").count(), 2, "one bar and one legend swatch");
        assert!(svg.contains("a &lt; b") && svg.contains("s&amp;t"));
        assert_eq!(nice_ceiling(37.0), 50.0);
        assert_eq!(
            (tick_label(1.5, 0.5), tick_label(40.0, 10.0), tick_label(0.75, 0.25)),
            ("1.5".into(), "40".into(), "0.75".into())
        );
    }

    #[test]
    fn line_chart_has_a_polyline_per_series() {
        let svg =
            lines("rss", "s", "MiB", &[("node 1".into(), vec![(0.0, 20.0), (60.0, 24.0)]), ("node 2".into(), vec![])]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("node 1") && svg.ends_with("</svg>\n"));
    }

    #[test]
    fn a_nan_point_breaks_a_line_and_is_not_drawn() {
        let points = vec![(0.0, 1.0), (1.0, 2.0), (1.5, f64::NAN), (2.0, 3.0), (3.0, 1.0)];
        let svg = lines("rounds", "s", "tx/s", &[("replicated".into(), points)]);
        assert_eq!(svg.matches("<polyline").count(), 2, "two rounds, two pieces");
        assert!(!svg.contains("NaN"));
    }
}
