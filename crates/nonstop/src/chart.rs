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

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A grouped bar chart: one group per category, one bar per series, values on a linear axis
/// from 0 to the largest value (at least `min_top`).
pub fn grouped_bars(title: &str, y_label: &str, categories: &[String], series: &[Series], min_top: f64) -> String {
    let (width, height) = (760.0, 420.0);
    let (left, right, top, bottom) = (70.0, 180.0, 40.0, 50.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let max = series.iter().flat_map(|s| s.values.iter().flatten()).fold(min_top, |a, &b| a.max(b));
    let top_value = nice_ceiling(max);
    let y = |v: f64| top + plot_h * (1.0 - v.max(0.0) / top_value);
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
        let value = top_value * tick as f64 / 5.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{value:.0}</text>"##,
            left + plot_w,
            left - 6.0,
            y(value) + 4.0,
            y = y(value)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + plot_h / 2.0,
        escape(y_label)
    );
    let group_w = plot_w / categories.len().max(1) as f64;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        let x0 = left + group_w * c as f64 + group_w * 0.1;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            left + group_w * (c as f64 + 0.5),
            top + plot_h + 18.0,
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
                y(value),
                bar_w * 0.92,
                (top + plot_h - y(value)).max(0.0),
                PALETTE[s % PALETTE.len()],
                escape(&one.name)
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#333"/>"##,
        left + plot_w,
        top + plot_h,
        top + plot_h
    );
    for (s, one) in series.iter().enumerate() {
        let ly = top + 10.0 + 20.0 * s as f64;
        let lx = left + plot_w + 15.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            ly - 10.0,
            PALETTE[s % PALETTE.len()],
            lx + 18.0,
            ly,
            escape(&one.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
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
    }
}
