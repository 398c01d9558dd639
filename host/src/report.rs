//! Self-contained HTML for the analysis report: inline SVG heatmaps and bar
//! charts, no scripts, no network.

use std::fmt::Write;

use crate::analyze::{Report, SPAN_COLUMNS};
use crate::inspect::si;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Viridis-like ramp from dark blue (0) to yellow (1).
fn color(v: f64) -> String {
    const STOPS: [(f64, [u8; 3]); 5] = [
        (0.0, [68, 1, 84]),
        (0.25, [59, 82, 139]),
        (0.5, [33, 145, 140]),
        (0.75, [94, 201, 98]),
        (1.0, [253, 231, 37]),
    ];
    let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
    let k = STOPS.windows(2).position(|w| v <= w[1].0).unwrap_or(STOPS.len() - 2);
    let ((a, ca), (b, cb)) = (STOPS[k], STOPS[k + 1]);
    let t = (v - a) / (b - a);
    let mix = |i: usize| (ca[i] as f64 + t * (cb[i] as f64 - ca[i] as f64)).round() as u8;
    format!("rgb({},{},{})", mix(0), mix(1), mix(2))
}

/// A square heatmap of `values` (rows = columns = boundaries), `None` cells grey.
pub fn heatmap_svg(title: &str, values: &[Vec<Option<f64>>]) -> String {
    let n = values.len();
    let cell = (360 / n.max(1)).clamp(8, 40);
    let margin = 40;
    let size = margin + n * cell + 10;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" role=\"img\"><title>{}</title>",
        size + 60,
        size + 20,
        escape(title)
    );
    for (i, row) in values.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let fill = v.map_or("#ccc".to_string(), color);
            let tip = v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
            let _ = write!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"{cell}\" height=\"{cell}\" fill=\"{fill}\"><title>h{i} vs h{j}: {tip}</title></rect>",
                margin + j * cell,
                margin + i * cell
            );
        }
        if n <= 30 || i % 2 == 0 {
            let _ = write!(
                svg,
                "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{i}</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{i}</text>",
                margin - 4,
                margin + i * cell + cell / 2 + 3,
                margin + i * cell + cell / 2,
                margin - 6
            );
        }
    }
    // Colour scale.
    let x = margin + n * cell + 20;
    for k in 0..20 {
        let v = 1.0 - k as f64 / 19.0;
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"14\" height=\"{}\" fill=\"{}\"/>",
            margin + k * 9,
            9,
            color(v)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"10\">1</text><text x=\"{}\" y=\"{}\" font-size=\"10\">0</text></svg>",
        x + 18,
        margin + 8,
        x + 18,
        margin + 180
    );
    svg
}

/// A bar chart of one value per block (`None` = not replaceable).
pub fn bars_svg(title: &str, labels: &[String], values: &[Option<f64>]) -> String {
    let (w, h, margin) = (560usize, 200usize, 40usize);
    let max = values.iter().flatten().fold(0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    let n = values.len().max(1);
    let bw = (w - margin) / n;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\"><title>{}</title>",
        h + 30,
        escape(title)
    );
    let _ = write!(svg, "<line x1=\"{margin}\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" stroke=\"#444\"/>");
    let _ = write!(svg, "<text x=\"2\" y=\"12\" font-size=\"10\">{}</text>", escape(&format!("{max:.3e}")));
    for (k, (label, v)) in labels.iter().zip(values).enumerate() {
        let x = margin + k * bw;
        match v {
            Some(v) => {
                let bh = ((v.abs() / max) * (h - 20) as f64).round() as usize;
                let _ = write!(
                    svg,
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{bh}\" fill=\"#3b528b\"><title>block {}: {v:.4e}</title></rect>",
                    x + 2,
                    h - bh,
                    bw.saturating_sub(4).max(1),
                    escape(label)
                );
            }
            None => {
                let _ = write!(svg, "<text x=\"{}\" y=\"{}\" font-size=\"9\" fill=\"#999\">n/a</text>", x + 2, h - 4);
            }
        }
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x + bw / 2,
            h + 14,
            escape(label)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The whole report page.
pub fn html(r: &Report) -> String {
    let labels: Vec<String> = r.blocks.iter().map(|b| b.index.to_string()).collect();
    let residual: Vec<Option<f64>> = r.blocks.iter().map(|b| b.score.as_ref().map(|s| s.linear_residual)).collect();
    let br: Vec<Option<f64>> = r.blocks.iter().map(|b| b.score.as_ref().map(|s| -s.br_cls)).collect();
    let br_all: Vec<Option<f64>> = r.blocks.iter().map(|b| b.score.as_ref().map(|s| -s.br_all_tokens)).collect();
    let mut rows = String::new();
    for s in r.spans.iter().take(30) {
        let cells: String = s.cells().iter().map(|c| format!("<td>{}</td>", escape(c))).collect();
        let _ = write!(rows, "<tr>{cells}</tr>");
    }
    let header: String = SPAN_COLUMNS.iter().map(|c| format!("<th>{}</th>", escape(c))).collect();
    let mut blocks = String::new();
    for b in &r.blocks {
        let _ = write!(
            blocks,
            "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            b.index,
            escape(&b.input),
            escape(&b.output),
            b.shape,
            si(b.params),
            si(b.macs),
            if b.replaceable { "yes" } else { "no" }
        );
    }
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>rba analysis: {file}</title><style>\
body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;font-size:13px}}\
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}th{{background:#eee}}code{{font-size:11px}}\
.figs{{display:flex;flex-wrap:wrap;gap:2em}}figure{{margin:0}}figcaption{{font-size:13px;color:#333}}</style></head><body>\
<h1>rba analysis</h1><p><b>{file}</b>: {params} parameters, {macs} MACs per image, opset {opset}.<br>\
Calibration: {images} images from <code>{source}</code>; {tool}; {seconds:.1} s.</p>\
<h2>Similarity between boundaries</h2><div class=\"figs\">\
<figure>{cka_svg}<figcaption>Linear CKA (CLS token, or spatial mean for CNN maps); grey: constant over images</figcaption></figure>\
<figure>{cos_svg}<figcaption>Mean per-image cosine similarity of the activations; grey: shapes differ</figcaption></figure></div>\
<h2>Per block</h2><div class=\"figs\">\
<figure>{res_svg}<figcaption>1 - R² of the linear map over the block (lower = more replaceable)</figcaption></figure>\
<figure>{br_svg}<figcaption>-BR on the CLS token (the paper's score; closer to 0 = more redundant)</figcaption></figure>\
<figure>{br_all_svg}<figcaption>-BR over all tokens</figcaption></figure></div>\
<h2>Candidate spans (best first)</h2><table><tr>{header}</tr>{rows}</table>\
<h2>Blocks</h2><table><tr><th>block</th><th>input</th><th>output</th><th>shape</th><th>params</th><th>MACs</th><th>replaceable</th></tr>{blocks}</table>\
</body></html>\n",
        file = escape(&r.model.file),
        params = si(r.model.params),
        macs = si(r.model.macs),
        opset = r.model.opset,
        images = r.data.images,
        source = escape(&r.data.source),
        tool = escape(&r.tool),
        seconds = r.seconds,
        cka_svg = heatmap_svg("linear CKA", &r.cka),
        cos_svg = heatmap_svg("cosine similarity", &r.cosine),
        res_svg = bars_svg("1 - R^2 per block", &labels, &residual),
        br_svg = bars_svg("-BR (CLS) per block", &labels, &br),
        br_all_svg = bars_svg("-BR (all tokens) per block", &labels, &br_all),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_has_one_cell_per_pair_and_greys_missing_ones() {
        let svg = heatmap_svg("t", &[vec![Some(1.0), None], vec![None, Some(0.0)]]);
        assert_eq!(svg.matches("<rect x=").count(), 4 + 20, "4 cells + 20 scale steps");
        assert_eq!(svg.matches("fill=\"#ccc\"").count(), 2);
        assert!(svg.contains(&color(1.0)) && svg.contains(&color(0.0)));
    }

    #[test]
    fn colour_ramp_ends() {
        assert_eq!(color(0.0), "rgb(68,1,84)");
        assert_eq!(color(1.0), "rgb(253,231,37)");
        assert_eq!(color(f64::NAN), color(0.0));
    }

    #[test]
    fn escapes_names() {
        let svg = bars_svg("<x>", &["a&b".into()], &[Some(1.0)]);
        assert!(svg.contains("&lt;x&gt;") && svg.contains("a&amp;b") && !svg.contains("<x>"));
    }
}
