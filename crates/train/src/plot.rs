//! `truthgpt plot RUN_DIR`: the run's training and validation loss, and its learning rate, drawn
//! from `metrics.jsonl` into one PNG.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{Result, TrainError};
use crate::run::{read_metrics, Record, METRICS};

/// Renders `run_dir/metrics.jsonl` to `out` (PNG, 1000 x 700).
pub fn plot_run(run_dir: &Path, out: &Path) -> Result<()> {
    let records = read_metrics(&run_dir.join(METRICS))?;
    let mut train = Vec::new();
    let mut val = Vec::new();
    let mut lr = Vec::new();
    for record in records {
        match record {
            Record::Train(r) => {
                train.push((r.step as f64, r.loss as f64));
                lr.push((r.step as f64, r.lr as f64));
            }
            Record::Eval(r) => val.push((r.step as f64, r.val_loss)),
        }
    }
    if train.is_empty() {
        return Err(TrainError::Plot(format!(
            "{} has no training steps to plot",
            run_dir.join(METRICS).display()
        )));
    }
    draw(&train, &val, &lr, out).map_err(|e| TrainError::Plot(format!("{}: {e}", out.display())))
}

fn draw(
    train: &[(f64, f64)],
    val: &[(f64, f64)],
    lr: &[(f64, f64)],
    out: &Path,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    // Text needs a font; DejaVu is embedded so plots render the same on any machine.
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
    let root = BitMapBackend::new(out, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(460);
    let last_step = train.last().map_or(1.0, |p| p.0).max(1.0);
    let losses = train.iter().chain(val).map(|p| p.1).filter(|l| l.is_finite());
    let (low, high) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), l| (lo.min(l), hi.max(l)));
    let margin = ((high - low) * 0.05).max(1e-3);

    let mut chart = ChartBuilder::on(&top)
        .caption("loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..last_step, (low - margin)..(high + margin))?;
    chart.configure_mesh().x_desc("step").y_desc("cross-entropy (nats)").draw()?;
    chart
        .draw_series(LineSeries::new(train.iter().copied(), BLUE.mix(0.35)))?
        .label("train (per step)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLUE.mix(0.35)));
    chart
        .draw_series(LineSeries::new(smoothed(train), BLUE.stroke_width(2)))?
        .label("train (smoothed)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(val.iter().copied(), RED.stroke_width(2)))?
        .label("validation")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RED.stroke_width(2)));
    chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

    let top_lr = lr.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-12);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("learning rate", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..last_step, 0.0..top_lr * 1.05)?;
    chart.configure_mesh().x_desc("step").y_label_formatter(&|v| format!("{v:.1e}")).draw()?;
    chart.draw_series(LineSeries::new(lr.iter().copied(), GREEN.stroke_width(2)))?;
    root.present()?;
    Ok(())
}

/// Exponential moving average (the per-step loss is noisy), bias-corrected like Adam's.
fn smoothed(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let (mut average, mut weight) = (0.0, 0.0);
    points
        .iter()
        .map(|&(step, loss)| {
            average = 0.95 * average + 0.05 * loss;
            weight = 0.95 * weight + 0.05;
            (step, average / weight)
        })
        .collect()
}
