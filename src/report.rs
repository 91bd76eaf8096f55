//! The report for people: `report/run_date=D/index.html`, one self-contained page (inline SVG
//! drawn with plotters' SVG backend, inline CSS, no script, nothing from the network).
//!
//! It is rendered from what the run publishes: the manifest (backtest, transitions, input
//! counts), customer_segments (distributions, lifecycle and loyalty mix) and segment_summary
//! (sizes, descriptions, plays, revenue at risk). Charts are 560 × 300 and scale down with the
//! page, so it reads at 1280 px without sideways scrolling.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use crate::error::{Error, Result};

/// The colours data are drawn in (the page lists them in `data-palette`, so a check can tell
/// marks from frames and grid lines).
pub const PALETTE: [RGBColor; 4] = [
    RGBColor(0x2f, 0x6d, 0xb5),
    RGBColor(0xe0, 0x7b, 0x39),
    RGBColor(0x3a, 0x9e, 0x6e),
    RGBColor(0xc4, 0x3d, 0x4b),
];
const WIDTH: u32 = 560;
const HEIGHT: u32 = 300;
const FONT: &str = "sans-serif";

fn hex(c: &RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

fn draw_err(e: impl std::fmt::Display) -> Error {
    Error::Model(format!("drawing the report: {e}"))
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A count or an amount as people read it: 8,226 · 116 k · 1.2 M.
fn money(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v.abs() >= 1e6 {
        return format!("{:.1} M", v / 1e6);
    }
    if v.abs() >= 1e4 {
        return format!("{:.0} k", v / 1e3);
    }
    let mut out = count(&Value::from(v.abs().round() as u64));
    if v < -0.5 {
        out.insert(0, '-');
    }
    out
}

/// A count from the manifest with thousands separators (exact below 10,000).
fn count(v: &Value) -> String {
    match v.as_u64() {
        Some(n) => {
            let digits = n.to_string();
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        None => "–".into(),
    }
}

/// A machine name (`warm_start`, `gradient_boosted_trees+calibration`) in words.
fn words(s: &str) -> String {
    s.replace('_', " ").replace('+', " + ")
}

/// The label of a segmented y axis drawn with its first label on top, as in the tables (row
/// `i` from the bottom is label `len - 1 - i`); empty between segments.
fn top_down(labels: &[String], v: &SegmentValue<usize>) -> String {
    match v {
        SegmentValue::CenterOf(i) => labels
            .len()
            .checked_sub(1 + i)
            .and_then(|j| labels.get(j))
            .cloned()
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// A horizontal bar per label.
fn bars(labels: &[String], values: &[f64], x_desc: &str, color: &RGBColor) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let n = labels.len().max(1);
        let max = values.iter().cloned().fold(0.0, f64::max).max(1e-9) * 1.08;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(150)
            // 0..=n-1: one segment per label (a range's end is a segment of its own).
            .build_cartesian_2d(0.0..max, (0..n - 1).into_segmented())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc(x_desc)
            .x_labels(5)
            .x_label_formatter(&|v| money(*v))
            .y_labels(n)
            .y_label_formatter(&|v| top_down(labels, v))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| {
                let row = n.saturating_sub(1 + i);
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(row)),
                        (*v, SegmentValue::Exact(row + 1)),
                    ],
                    color.filled(),
                );
                bar.set_margin(4, 4, 0, 0);
                bar
            }))
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// A histogram of `values` over [lo, hi) in `bins` bins; `label` formats an x position.
fn histogram(
    values: &[f64],
    (lo, hi): (f64, f64),
    bins: usize,
    x_desc: &str,
    label: &dyn Fn(&f64) -> String,
    color: &RGBColor,
) -> Result<String> {
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u64; bins];
    for v in values.iter().filter(|v| v.is_finite()) {
        let b = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.08;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, 0.0..max)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(x_desc)
            .y_desc("customers")
            .x_label_formatter(label)
            .y_label_formatter(&|v| money(*v))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, c)| {
                let x0 = lo + i as f64 * width;
                let mut bar = Rectangle::new([(x0, 0.0), (x0 + width, *c as f64)], color.filled());
                bar.set_margin(0, 0, 1, 1);
                bar
            }))
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// The backtest's calibration: predicted vs observed churn per bin, for each model.
fn calibration(series: &[(String, Vec<(f64, f64)>)]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("predicted churn probability")
            .y_desc("observed churn")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                &RGBColor(170, 170, 170),
            ))
            .map_err(draw_err)?;
        for (k, (name, points)) in series.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(draw_err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(200, 200, 200))
            .label_font((FONT, 13))
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// The transition matrix: customers from each previous segment (rows; "new" for customers
/// not in the previous run) to each segment now (columns).
fn transitions(rows: &[String], cols: &[String], cells: &[(usize, usize, f64)]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (nr, nc) = (rows.len().max(1), cols.len().max(1));
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(110)
            .y_label_area_size(130)
            .build_cartesian_2d((0..nc - 1).into_segmented(), (0..nr - 1).into_segmented())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("segment now")
            .y_desc("segment at the previous run")
            .x_labels(nc)
            .y_labels(nr)
            // Column names are drawn below, rotated (the mesh centres rotated labels on their
            // tick, into the plot).
            .x_label_formatter(&|_| String::new())
            .y_label_formatter(&|v| top_down(rows, v))
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .draw()
            .map_err(draw_err)?;
        let max = cells.iter().map(|c| c.2).fold(1.0, f64::max);
        let base = PALETTE[0];
        chart
            .draw_series(cells.iter().map(|&(r, c, n)| {
                let r = nr.saturating_sub(1 + r);
                // Intensity on a square-root scale, so small flows still show.
                let alpha = 0.15 + 0.85 * (n / max).sqrt();
                Rectangle::new(
                    [
                        (SegmentValue::Exact(c), SegmentValue::Exact(r)),
                        (SegmentValue::Exact(c + 1), SegmentValue::Exact(r + 1)),
                    ],
                    base.mix(alpha).filled(),
                )
            }))
            .map_err(draw_err)?;
        chart
            .draw_series(cells.iter().map(|&(r, c, n)| {
                let r = nr.saturating_sub(1 + r);
                Text::new(
                    money(n),
                    (SegmentValue::CenterOf(c), SegmentValue::CenterOf(r)),
                    (FONT, 11)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )
            }))
            .map_err(draw_err)?;
        let (xs, ys) = chart.plotting_area().get_pixel_range();
        let cell = f64::from(xs.end - xs.start) / nc as f64;
        for (c, name) in cols.iter().enumerate() {
            let x = xs.start + (cell * (c as f64 + 0.5)).round() as i32;
            root.draw(&Text::new(
                name.clone(),
                (x, ys.end + 6),
                (FONT, 12)
                    .into_font()
                    .transform(FontTransform::Rotate90)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// A column of `batch` as strings (empty for nulls) or numbers (NaN for nulls).
fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<String>> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Model(format!("the report needs column {name}")))?;
    let c = cast(c, &DataType::Utf8).map_err(|e| Error::engine("report", e.into()))?;
    let c = c.as_string::<i32>();
    Ok((0..c.len())
        .map(|i| {
            if c.is_null(i) {
                String::new()
            } else {
                c.value(i).to_string()
            }
        })
        .collect())
}

fn numbers(batch: &RecordBatch, name: &str) -> Result<Vec<f64>> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Model(format!("the report needs column {name}")))?;
    let c = cast(c, &DataType::Float64).map_err(|e| Error::engine("report", e.into()))?;
    let c = c.as_primitive::<Float64Type>();
    Ok((0..c.len())
        .map(|i| if c.is_null(i) { f64::NAN } else { c.value(i) })
        .collect())
}

/// Customers per value of `values`, in `order`.
fn mix(values: &[String], order: &[&str]) -> Vec<f64> {
    order
        .iter()
        .map(|o| values.iter().filter(|v| v == o).count() as f64)
        .collect()
}

fn figure(out: &mut String, title: &str, caption: &str, svg: &str) {
    out.push_str(&format!(
        "<figure class=\"chart\"><figcaption><strong>{}</strong> {}</figcaption>{}</figure>",
        esc(title),
        esc(caption),
        svg
    ));
}

/// The page for the run described by `manifest`, with its customer_segments and
/// segment_summary tables.
pub fn render(manifest: &Value, segments: &RecordBatch, summary: &RecordBatch) -> Result<String> {
    let run_date = manifest["run_date"].as_str().unwrap_or("?");
    let mut charts = String::new();

    // Segments: sizes and revenue at risk, from segment_summary (ordered by id).
    let names = strings(summary, "segment")?;
    let sizes = numbers(summary, "customers")?;
    let at_risk = numbers(summary, "revenue_at_risk")?;
    figure(
        &mut charts,
        "Segment sizes",
        "customers in each segment",
        &bars(&names, &sizes, "customers", &PALETTE[0])?,
    );
    figure(
        &mut charts,
        "Revenue at risk",
        "Σ churn score × each customer's net revenue of the last 365 days: the yearly revenue expected to walk away",
        &bars(&names, &at_risk, "revenue at risk", &PALETTE[3])?,
    );

    // Score distributions.
    let churn = numbers(segments, "churn_risk_score")?;
    figure(
        &mut charts,
        "Churn risk",
        "customers by their probability of no completed order in the next 90 days",
        &histogram(
            &churn,
            (0.0, 1.0),
            20,
            "churn risk score",
            &|v| format!("{v:.1}"),
            &PALETTE[1],
        )?,
    );
    let value: Vec<f64> = numbers(segments, "value_score")?
        .iter()
        .map(|v| (1.0 + v.max(0.0)).log10())
        .collect();
    let top = value
        .iter()
        .cloned()
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    figure(
        &mut charts,
        "Customer value",
        "predicted net revenue of the next 365 days, discounted to today (logarithmic bins)",
        &histogram(
            &value,
            (0.0, top.ceil()),
            24,
            "value score",
            &|v| money(10f64.powf(*v) - 1.0),
            &PALETTE[2],
        )?,
    );

    // Lifecycle and loyalty.
    let stages = crate::segments::LIFECYCLE_STAGES.map(str::to_string);
    figure(
        &mut charts,
        "Lifecycle stage",
        "where customers are in their relationship with the shop",
        &bars(
            &stages,
            &mix(
                &strings(segments, "lifecycle_stage")?,
                &crate::segments::LIFECYCLE_STAGES,
            ),
            "customers",
            &PALETTE[0],
        )?,
    );
    let tiers = crate::segments::LOYALTY_TIERS.map(str::to_string);
    figure(
        &mut charts,
        "Loyalty tier",
        "by completed orders in the last 365 days",
        &bars(
            &tiers,
            &mix(
                &strings(segments, "loyalty_tier")?,
                &crate::segments::LOYALTY_TIERS,
            ),
            "customers",
            &PALETTE[2],
        )?,
    );

    // The backtest.
    let backtest = &manifest["models"]["backtest"];
    let mut backtest_note = String::new();
    if backtest.is_object() {
        let mut series = Vec::new();
        let mut parts = Vec::new();
        for (key, name) in [("churn_trees", "boosted trees"), ("churn_bgnbd", "BG/NBD")] {
            let m = &backtest[key];
            if !m.is_object() {
                continue;
            }
            let points: Vec<(f64, f64)> = m["calibration"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| Some((b["mean_predicted"].as_f64()?, b["observed_rate"].as_f64()?)))
                .collect();
            parts.push(format!(
                "{name}: AUC {:.3}, top-decile lift {:.2}, Brier {:.3}",
                m["auc"].as_f64().unwrap_or(f64::NAN),
                m["top_decile_lift"].as_f64().unwrap_or(f64::NAN),
                m["brier"].as_f64().unwrap_or(f64::NAN)
            ));
            series.push((name.to_string(), points));
        }
        if !series.is_empty() {
            let chosen = manifest["models"]["churn"]["method"]
                .as_str()
                .unwrap_or("?");
            figure(
                &mut charts,
                "Backtest: churn calibration",
                &format!(
                    "customers scored as of {} days ago, against whether they then ordered; points on the grey diagonal are exactly calibrated. {}. Scores in use: {}.",
                    backtest["window_days"].as_u64().unwrap_or(90),
                    parts.join("; "),
                    words(chosen)
                ),
                &calibration(&series)?,
            );
        }
    } else {
        backtest_note = "<p class=\"note\">No backtest this run (too little history, or the stored models scored it: see the refit's report).</p>".into();
    }

    // Transitions since the previous run.
    let mut transitions_note = String::new();
    match manifest["clustering"]["transition_matrix"].as_array() {
        Some(cells) if !cells.is_empty() => {
            let label = |c: &Value, pre: &str| {
                c[format!("{pre}segment")]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| "(new customers)".into())
            };
            let mut rows: Vec<String> = Vec::new();
            let mut cols: Vec<String> = Vec::new();
            for c in cells {
                let (r, k) = (label(c, "from_"), label(c, "to_"));
                if !rows.contains(&r) {
                    rows.push(r);
                }
                if !cols.contains(&k) {
                    cols.push(k);
                }
            }
            rows.sort();
            cols.sort();
            let at = |v: &[String], s: &str| v.iter().position(|x| x == s).unwrap_or(0);
            let data: Vec<(usize, usize, f64)> = cells
                .iter()
                .map(|c| {
                    (
                        at(&rows, &label(c, "from_")),
                        at(&cols, &label(c, "to_")),
                        c["customers"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect();
            let previous = manifest["clustering"]["previous_run_date"]
                .as_str()
                .unwrap_or("?");
            figure(
                &mut charts,
                "Moves between segments",
                &format!("customers by their segment at the previous run ({previous}) and now"),
                &transitions(&rows, &cols, &data)?,
            );
        }
        _ => {
            transitions_note =
                "<p class=\"note\">First run: no previous run to compare with, so no moves between segments yet.</p>".into();
        }
    }

    // The page.
    let mut page = String::new();
    let palette: Vec<String> = PALETTE.iter().map(hex).collect();
    page.push_str(&format!("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Customer segments, {date}</title><style>{css}</style></head>\
         <body data-palette=\"{palette}\"><main>\
         <h1>Customer segments, {date}</h1>\
         <p class=\"meta\">{customers} customers in {k} segments · run {run_id} · segments {mode} · churn scored by {method}</p>",
        date = esc(run_date),
        css = CSS,
        palette = palette.join(" "),
        customers = manifest["customers"].as_u64().unwrap_or(0),
        k = names.len(),
        run_id = esc(manifest["run_id"].as_str().unwrap_or("?")),
        mode = esc(&words(manifest["clustering"]["mode"].as_str().unwrap_or("?"))),
        method = esc(&words(manifest["models"]["churn"]["method"].as_str().unwrap_or("?"))),));
    page.push_str(&segment_table(summary)?);
    page.push_str("<h2>Charts</h2>");
    page.push_str(&backtest_note);
    page.push_str(&transitions_note);
    page.push_str(&format!("<div class=\"grid\">{charts}</div>"));
    page.push_str(&quality_table(&manifest["inputs"]));
    page.push_str("</main></body></html>\n");
    Ok(page)
}

/// The segments with their description and play.
fn segment_table(summary: &RecordBatch) -> Result<String> {
    let names = strings(summary, "segment")?;
    let sizes = numbers(summary, "customers")?;
    let shares = numbers(summary, "share")?;
    let churn = numbers(summary, "mean_churn_risk_score")?;
    let value = numbers(summary, "total_value")?;
    let risk = numbers(summary, "revenue_at_risk")?;
    let descriptions = strings(summary, "description")?;
    let actions = strings(summary, "recommended_action")?;
    let mut out = String::from(
        "<h2>Segments and what to do</h2><table class=\"segments\"><thead><tr>\
         <th>Segment</th><th>Customers</th><th>Mean churn</th><th>Total value</th>\
         <th>Revenue at risk</th><th>Who they are</th><th>Recommended action</th>\
         </tr></thead><tbody>",
    );
    for i in 0..names.len() {
        out.push_str(&format!(
            "<tr><td><strong>{}</strong></td><td class=\"n\">{} ({:.1} %)</td>\
             <td class=\"n\">{:.2}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td>{}</td><td>{}</td></tr>",
            esc(&names[i]),
            money(sizes[i]),
            shares[i] * 100.0,
            churn[i],
            money(value[i]),
            money(risk[i]),
            esc(&descriptions[i]),
            esc(&actions[i])
        ));
    }
    out.push_str("</tbody></table>");
    Ok(out)
}

/// Rows read, used and left out per input.
fn quality_table(inputs: &Value) -> String {
    let mut out = String::from(
        "<h2>Input quality</h2><table class=\"quality\"><thead><tr><th>Input</th><th>Files</th>\
         <th>Rows in files</th><th>Rows used</th><th>After the cut-off</th><th>Left out, by reason</th>\
         </tr></thead><tbody>",
    );
    for (name, i) in inputs.as_object().into_iter().flatten() {
        let rejected: Vec<String> = i["rejected"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(reason, n)| format!("{} {}", esc(reason), count(n)))
            .collect();
        let skipped = i["skipped_files"].as_array().map_or(0, Vec::len);
        let mut left_out = if rejected.is_empty() {
            "none".to_string()
        } else {
            rejected.join(", ")
        };
        if skipped > 0 {
            left_out.push_str(&format!("; {skipped} unreadable files skipped"));
        }
        out.push_str(&format!(
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td>{}</td></tr>",
            esc(name),
            count(&i["files"]),
            count(&i["rows_in_files"]),
            count(&i["rows_used"]),
            count(&i["rows_after_cutoff"]),
            left_out
        ));
    }
    out.push_str("</tbody></table>");
    out
}

const CSS: &str = "\
*{box-sizing:border-box}\
body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',sans-serif;color:#222;background:#f6f7f9}\
main{max-width:1200px;margin:0 auto;padding:24px}\
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:28px 0 10px}\
.meta,.note{color:#555}\
table{width:100%;border-collapse:collapse;background:#fff;font-size:14px}\
th,td{padding:6px 8px;border-bottom:1px solid #e3e5e8;text-align:left;vertical-align:top}\
th{background:#eef0f3}td.n{text-align:right;white-space:nowrap}\
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}\
figure.chart{margin:0;background:#fff;padding:12px;border:1px solid #e3e5e8;border-radius:6px;min-width:0}\
figure.chart figcaption{font-size:14px;margin-bottom:8px;color:#444}\
figure.chart svg{width:100%;height:auto;display:block}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_numbers() {
        assert_eq!(money(8226.4), "8,226");
        assert_eq!(money(999.0), "999");
        assert_eq!(money(116_000.0), "116 k");
        assert_eq!(money(1_234_567.0), "1.2 M");
        assert_eq!(money(-1500.0), "-1,500");
        assert_eq!(count(&Value::from(196_317u64)), "196,317");
        assert_eq!(
            words("gradient_boosted_trees+calibration"),
            "gradient boosted trees + calibration"
        );
    }

    #[test]
    fn charts_draw_their_data_in_the_palette() {
        let svg = bars(
            &["A & B".into(), "C".into()],
            &[10.0, 20.0],
            "customers",
            &PALETTE[0],
        )
        .unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains(&hex(&PALETTE[0])), "{svg}");
        assert!(svg.contains("A &amp; B"), "labels are escaped: {svg}");
        let h = histogram(
            &[0.1, 0.15, 0.9],
            (0.0, 1.0),
            10,
            "x",
            &|v| format!("{v}"),
            &PALETTE[1],
        )
        .unwrap();
        assert_eq!(h.matches(&hex(&PALETTE[1])).count(), 10, "one bar per bin");
    }
}
