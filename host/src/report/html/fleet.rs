//! The fleet page (`rba fleet ... --html`): every board's outcome, latency
//! across boards, accuracy against tail latency, and who failed which gate.

use std::fmt::Write;

use super::{axes_svg, escape, latency_boxes_svg, page, svg_open, Axis, Frame, TickFormat, BELOW};
use crate::report::fleet::{BoardOutcome, BoardResult, FleetReport};
use crate::report::text::format_ns;

fn outcome_colour(o: BoardOutcome) -> &'static str {
    match o {
        o if o.ok() => "#d8f0d8",
        BoardOutcome::NotAttempted => "#eeeeee",
        _ => "#f6d0d0",
    }
}

fn cell(v: Option<String>) -> String {
    escape(&v.unwrap_or_else(|| "-".into()))
}

/// Top-1 accuracy (%) against p99 latency (ms), one point per board that
/// measured both: a green dot where every gate held, a red cross where one
/// failed, the board's name beside it. Axes by [`axes_svg`].
fn accuracy_latency_svg(boards: &[BoardResult]) -> Option<String> {
    let points: Vec<(&str, f64, f64, bool)> = boards
        .iter()
        .filter_map(|b| {
            let f = b.figures()?;
            let passed = b.outcome != BoardOutcome::GateFailed;
            Some((b.name.as_str(), f.p99_ns? as f64, f.top1?, passed))
        })
        .collect();
    if points.is_empty() {
        return None;
    }
    let xs: Vec<f64> = points.iter().map(|p| p.1).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.2).collect();
    let x = Axis::fitted("p99 latency per run (ms)", &xs, TickFormat::Millis, true, 5);
    let y = Axis::fitted("top-1 accuracy", &ys, TickFormat::Percent, false, 5);
    let f = Frame::new(&y, 14.0, 420.0, 240.0);
    let mut svg = svg_open(f.right() + 120.0, f.bottom() + BELOW, "accuracy against p99 latency per board");
    svg.push_str(&axes_svg(&f, &x, &y));
    for (name, px, py, passed) in points {
        let (cx, cy) = (f.x(&x, px), f.y(&y, py));
        let tip = format!("{name}: top1 {:.2}%, p99 {}", 100.0 * py, format_ns(px));
        let mark = if passed {
            format!("<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"6\" fill=\"#2a9d4a\" stroke=\"#fff\"/>")
        } else {
            format!(
                "<path d=\"M{:.1},{:.1}L{:.1},{:.1}M{:.1},{:.1}L{:.1},{:.1}\" stroke=\"#d62728\" stroke-width=\"3\"/>",
                cx - 6.0,
                cy - 6.0,
                cx + 6.0,
                cy + 6.0,
                cx - 6.0,
                cy + 6.0,
                cx + 6.0,
                cy - 6.0
            )
        };
        let _ = write!(
            svg,
            "<g><title>{}</title>{mark}<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text></g>",
            escape(&tip),
            cx + 9.0,
            cy + 4.0,
            escape(name)
        );
    }
    let _ = write!(
        svg,
        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"6\" fill=\"#2a9d4a\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">gates held</text>\
<path d=\"M{:.1},{:.1}l12,12m-12,0l12,-12\" stroke=\"#d62728\" stroke-width=\"3\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">a gate failed</text>",
        f.right() + 20.0,
        f.top + 10.0,
        f.right() + 32.0,
        f.top + 14.0,
        f.right() + 14.0,
        f.top + 24.0,
        f.right() + 32.0,
        f.top + 34.0
    );
    svg.push_str("</svg>");
    Some(svg)
}

/// The whole page.
pub fn fleet_page(r: &FleetReport) -> String {
    let title = format!("rba fleet {:?}", r.command).to_lowercase();
    let mut rows = String::new();
    for b in &r.boards {
        let f = b.figures().unwrap_or_default();
        let active = b
            .activation
            .as_ref()
            .and_then(|a| a.active.as_ref())
            .or_else(|| b.apps.first().and_then(|a| a.active.as_ref()))
            .map(|m| format!("{} (generation {})", m.model, m.generation));
        let _ = write!(
            rows,
            "<tr style=\"background:{}\"><td style=\"text-align:left\">{}{}</td><td style=\"text-align:left\">{}</td>\
<td style=\"text-align:left\">{}</td><td>{}</td><td style=\"text-align:left\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
<td>{:.1} s</td><td style=\"text-align:left\">{}</td></tr>",
            outcome_colour(b.outcome),
            escape(&b.name),
            if b.canary { " (canary)" } else { "" },
            escape(&b.tags.join(", ")),
            escape(&b.link),
            escape(b.outcome.label()),
            cell(active),
            cell(f.top1.map(|v| format!("{:.2}%", 100.0 * v))),
            cell(f.agreement.map(|v| format!("{:.2}%", 100.0 * v))),
            cell(f.p99_ns.map(|v| format_ns(v as f64))),
            b.duration_ms as f64 / 1e3,
            escape(&b.message)
        );
    }
    // Who failed which gate.
    let mut failed = String::new();
    for b in &r.boards {
        let Some(a) = &b.activation else { continue };
        for c in a.failed_checks() {
            let _ = write!(
                failed,
                "<tr><td style=\"text-align:left\">{}</td><td style=\"text-align:left\"><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                escape(&b.name),
                escape(&c.gate.to_string()),
                cell(c.measured.map(|v| c.gate.unit.format(v))),
                escape(&c.gate.unit.format(c.gate.threshold))
            );
        }
    }
    let series: Vec<(String, Vec<u64>)> =
        r.boards.iter().filter_map(|b| Some((b.name.clone(), b.samples_ns()?.to_vec()))).collect();
    let mut sections = vec![format!(
        "<h1>{}</h1><p>Inventory <code>{}</code>{}; {} board(s): <b>{} ok</b>, {} failed, {} not attempted; \
{:.1} s with {} in parallel{}. Started {}.</p>{}{}",
        escape(&title),
        escape(&r.inventory),
        if r.tags.is_empty() { String::new() } else { format!(", tags {}", escape(&r.tags.join(", "))) },
        r.summary.boards,
        r.summary.ok,
        r.summary.failed,
        r.summary.not_attempted,
        r.wall_ms as f64 / 1e3,
        r.parallel,
        if r.canary > 0 { format!(", {} canary board(s) first", r.canary) } else { String::new() },
        escape(&r.started_at),
        r.model.as_ref().map_or(String::new(), |m| format!(
            "<p>Model <b>{}</b> ({} bytes, sha256 <code>{}</code>){}{}</p>",
            escape(&m.name),
            m.size,
            escape(&m.sha256),
            r.app.as_ref().map_or(String::new(), |a| format!(" as application <b>{}</b>", escape(a))),
            if r.gates.is_empty() {
                String::new()
            } else {
                format!(
                    "; gates <code>{}</code>",
                    escape(&r.gates.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(","))
                )
            }
        )),
        r.halted.as_ref().map_or(String::new(), |h| format!("<p><b>{}</b></p>", escape(h))),
    )];
    sections.push(format!(
        "<h2>Boards</h2><table><tr><th>board</th><th>tags</th><th>link</th><th>outcome</th><th>active model</th>\
<th>top1</th><th>agreement</th><th>p99</th><th>time</th><th>detail</th></tr>{rows}</table>"
    ));
    if !failed.is_empty() {
        sections.push(format!(
            "<h2>Failed gates</h2><table><tr><th>board</th><th>gate</th><th>measured</th><th>threshold</th></tr>{failed}</table>"
        ));
    }
    let mut figs = String::new();
    if !series.is_empty() {
        let _ = write!(
            figs,
            "<figure>{}<figcaption>Warm latency per run on each board (box: quartiles, line: median, whiskers: p1 to p99)</figcaption></figure>",
            latency_boxes_svg("latency across boards", &series)
        );
    }
    if let Some(svg) = accuracy_latency_svg(&r.boards) {
        let _ = write!(figs, "<figure>{svg}<figcaption>Top-1 accuracy on the eval bundle against p99 latency, measured on each board</figcaption></figure>");
    }
    if !figs.is_empty() {
        sections.push(format!("<h2>Measured on the boards</h2><div class=\"figs\">{figs}</div>"));
    }
    page(&title, &sections)
}
