//! `truthgpt plot RUN_DIR...`: runs' training and validation loss, and their learning rates,
//! drawn from each `metrics.jsonl` into one PNG.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{Result, TrainError};
use crate::run::{read_metrics, Record, METRICS};

/// One run's curves from its `metrics.jsonl`.
struct Curves {
    name: String,
    train: Vec<(f64, f64)>,
    val: Vec<(f64, f64)>,
    lr: Vec<(f64, f64)>,
}

impl Curves {
    fn read(run_dir: &Path) -> Result<Curves> {
        let path = run_dir.join(METRICS);
        let (mut train, mut val, mut lr) = (Vec::new(), Vec::new(), Vec::new());
        for record in read_metrics(&path)? {
            match record {
                Record::Train(r) => {
                    train.push((r.step as f64, r.loss as f64));
                    lr.push((r.step as f64, r.lr as f64));
                }
                Record::Eval(r) => val.push((r.step as f64, r.val_loss)),
            }
        }
        if train.is_empty() {
            return Err(TrainError::Plot(format!("{} has no training steps to plot", path.display())));
        }
        let name =
            run_dir.file_name().map_or_else(|| run_dir.display().to_string(), |n| n.to_string_lossy().into());
        Ok(Curves { name, train, val, lr })
    }
}

/// Renders `run_dir/metrics.jsonl` to `out` (PNG, 1000 x 700).
pub fn plot_run(run_dir: &Path, out: &Path) -> Result<()> {
    plot_runs(&[run_dir], out)
}

/// Renders several runs' curves overlaid, one colour each (the first run's as [`plot_run`]
/// draws it), to compare them at equal steps.
pub fn plot_runs(run_dirs: &[&Path], out: &Path) -> Result<()> {
    let runs = run_dirs.iter().map(|dir| Curves::read(dir)).collect::<Result<Vec<_>>>()?;
    if runs.is_empty() {
        return Err(TrainError::Plot("no runs to plot".into()));
    }
    draw(&runs, out).map_err(|e| TrainError::Plot(format!("{}: {e}", out.display())))
}

/// Line colours of the runs, in order, cycling.
const PALETTE: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, RGBColor(230, 140, 0)];

fn draw(runs: &[Curves], out: &Path) -> std::result::Result<(), Box<dyn std::error::Error>> {
    // Text needs a font; DejaVu is embedded so plots render the same on any machine.
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
    let root = BitMapBackend::new(out, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(460);
    let last_step = runs.iter().filter_map(|r| r.train.last()).map(|p| p.0).fold(1.0, f64::max);
    let losses =
        runs.iter().flat_map(|r| r.train.iter().chain(&r.val)).map(|p| p.1).filter(|l| l.is_finite());
    let (low, high) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), l| (lo.min(l), hi.max(l)));
    let margin = ((high - low) * 0.05).max(1e-3);
    let single = runs.len() == 1;
    let label =
        |run: &Curves, what: &str| if single { what.to_string() } else { format!("{} {what}", run.name) };

    let mut chart = ChartBuilder::on(&top)
        .caption("loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..last_step, (low - margin)..(high + margin))?;
    chart.configure_mesh().x_desc("step").y_desc("cross-entropy (nats)").draw()?;
    for (i, run) in runs.iter().enumerate() {
        // One run: train blue, validation red; several: a colour per run, validation dashed.
        let (train_colour, val_colour) = match single {
            true => (BLUE, RED),
            false => (PALETTE[i % PALETTE.len()], PALETTE[i % PALETTE.len()]),
        };
        chart
            .draw_series(LineSeries::new(run.train.iter().copied(), train_colour.mix(0.25)))?
            .label(label(run, "train (per step)"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], train_colour.mix(0.25)));
        chart
            .draw_series(LineSeries::new(smoothed(&run.train), train_colour.stroke_width(2)))?
            .label(label(run, "train (smoothed)"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], train_colour.stroke_width(2)));
        chart
            .draw_series(DashedLineSeries::new(run.val.iter().copied(), 8, 4, val_colour.stroke_width(2)))?
            .label(label(run, "validation"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], val_colour.stroke_width(2)));
        chart.draw_series(run.val.iter().map(|&p| Circle::new(p, 3, val_colour.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

    let top_lr = runs.iter().flat_map(|r| &r.lr).map(|p| p.1).filter(|v| v.is_finite()).fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("learning rate", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..last_step, 0.0..top_lr.max(1e-12) * 1.05)?;
    chart.configure_mesh().x_desc("step").y_label_formatter(&|v| format!("{v:.1e}")).draw()?;
    for (i, run) in runs.iter().enumerate() {
        let colour = if single { GREEN } else { PALETTE[i % PALETTE.len()] };
        chart.draw_series(LineSeries::new(run.lr.iter().copied(), colour.stroke_width(2)))?;
    }
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
