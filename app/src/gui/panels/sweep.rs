//! The Sweep panel: one or two of the Merge panel's numbers over a range, every cell merged in
//! memory and scored by the worker; a line (one parameter) or a heatmap (two) fills in as cells
//! arrive, the best cell is marked, and clicking a cell loads its settings into the Merge panel.

use egui::{Align2, Color32, FontId, Rect, Sense, Stroke, StrokeKind, pos2, vec2};
use egui_plot::{Line, MarkerShape, Plot, PlotPoint, Points};
use mergescope_core::sweep::MAX_STEPS;
use mergescope_core::sweep::metric::{best_cell, higher_is_better, is_accuracy, metric_value};

use crate::gui::app::{Notice, Panel, Workbench};
use crate::gui::chart;
use crate::gui::state::MergeSettings;
use crate::gui::sweep::{AxisChoice, ParamChoice, SweepRequest, SweepResults, param_choices};

/// Heatmaps up to this many cells name each cell as a button of its own.
const MAX_NAMED_CELLS: usize = 50 * 50;

/// The colour of the best cell's mark: visible on every viridis colour.
const BEST: Color32 = Color32::from_rgb(235, 40, 40);

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.heading("Sweep");
        ui.add_space(24.0);
        chart::folder_ui(ui);
    });
    let (Some(family), Some(settings)) = (app.family.clone(), app.settings.clone()) else {
        ui.label("Open a family first (Models panel).");
        return;
    };
    let objective = if app.texts.loaded.is_some() {
        "perplexity on each text domain (lower is better)"
    } else if family.is_demo {
        "the demo's test accuracy"
    } else {
        "retention (the share of each task vector the merge keeps)"
    };
    ui.label(format!(
        "Vary one or two of the Merge panel's numbers ({}) over a range: every cell is the \
         panel's recipe with those values, merged in memory and scored on {objective}. Click \
         a cell to load its settings into the Merge panel.",
        settings.method
    ));
    let choices = param_choices(&settings, &family);
    app.sweep.fit_to(&choices);
    if choices.is_empty() {
        ui.label("These settings have no number to sweep.");
        return;
    }
    axes_ui(app, ui, &choices);
    run_ui(app, ui, &settings, &choices);
    ui.separator();
    let Some(results) = app.sweep.results.clone() else {
        ui.label("No sweep yet.");
        return;
    };
    if results.file != family.recipe_file() {
        ui.colored_label(
            ui.visuals().warn_fg_color,
            "These results are of another family; clicking a cell will not load.",
        );
    }
    metric_ui(app, ui, &results);
    let Some(metric) = app.sweep.metric.clone() else {
        ui.label("Waiting for the first cell…");
        return;
    };
    let title = format!(
        "{} by {}",
        crate::gui::sweep::metric_label(&metric),
        results.labels.join(" and ")
    );
    let name = format!("sweep-{}", results.axes.len());
    let clicked = chart::framed_ui(
        ui,
        &mut app.notice,
        &name,
        &title,
        || results.csv(),
        |ui| match results.axes.len() {
            1 => line_ui(ui, &results, &metric),
            _ => heatmap_ui(ui, &results, &metric),
        },
    );
    best_ui(ui, &results, &metric);
    if let Some(i) = clicked {
        load_cell(app, &results, i);
    }
}

/// The parameter, range and steps of each axis, and the switch for a second one.
fn axes_ui(app: &mut Workbench, ui: &mut egui::Ui, choices: &[ParamChoice]) {
    let label_of = |path: &str| {
        choices
            .iter()
            .find(|c| c.path == path)
            .map_or_else(|| path.to_owned(), |c| c.label.clone())
    };
    let count = app.sweep.axes.len();
    for (i, axis) in app.sweep.axes.iter_mut().enumerate() {
        ui.horizontal(|ui| {
            let label = ui.label(if i == 0 {
                "parameter (rows):"
            } else {
                "second parameter (columns):"
            });
            egui::ComboBox::from_id_salt(("sweep parameter", i))
                .selected_text(label_of(&axis.path))
                .width(280.0)
                .show_ui(ui, |ui| {
                    for choice in choices {
                        if ui
                            .selectable_label(axis.path == choice.path, &choice.label)
                            .clicked()
                        {
                            *axis = AxisChoice::new(choice);
                        }
                    }
                })
                .response
                .labelled_by(label.id);
            let from = ui.label("from");
            ui.add(egui::DragValue::new(&mut axis.start).speed(0.01))
                .labelled_by(from.id);
            let to = ui.label("to");
            ui.add(egui::DragValue::new(&mut axis.end).speed(0.01))
                .labelled_by(to.id);
            let steps = ui.label("steps");
            ui.add(egui::DragValue::new(&mut axis.steps).range(2..=MAX_STEPS))
                .labelled_by(steps.id);
        });
    }
    let mut two = count == 2;
    if ui
        .checkbox(&mut two, "sweep a second parameter (a heatmap)")
        .changed()
    {
        if two {
            let taken = &app.sweep.axes[0].path;
            let other = choices
                .iter()
                .find(|c| c.path != *taken)
                .unwrap_or(&choices[0]);
            app.sweep.axes.push(AxisChoice::new(other));
        } else {
            app.sweep.axes.truncate(1);
        }
    }
}

/// The Run button, the size of the grid, and what is wrong with the axes.
fn run_ui(
    app: &mut Workbench,
    ui: &mut egui::Ui,
    settings: &MergeSettings,
    choices: &[ParamChoice],
) {
    let axes: Result<Vec<_>, String> = app.sweep.axes.iter().map(AxisChoice::to_axis).collect();
    let cells: usize = app.sweep.axes.iter().map(|a| a.steps).product();
    ui.horizontal(|ui| {
        let ready = axes.is_ok() && !app.sweep.running && app.busy.is_none();
        let run = ui
            .add_enabled(ready, egui::Button::new("Run sweep"))
            .on_hover_text(
                "Merge and score every cell on the worker; Cancel in the status bar stops it",
            );
        ui.label(format!("{cells} cells"));
        if app.sweep.running {
            let done = app.sweep.results.as_ref().map_or(0, |r| r.cells.len());
            ui.label(format!(
                "running: {done} of {cells} done (Cancel in the status bar)"
            ));
        } else if app.busy.is_some() {
            ui.label("waits for the job in progress (see the status bar)");
        }
        if run.clicked()
            && let (Ok(axes), Some(family)) = (&axes, &app.family)
        {
            let labels = app
                .sweep
                .axes
                .iter()
                .map(|a| {
                    choices
                        .iter()
                        .find(|c| c.path == a.path)
                        .map_or_else(|| a.path.clone(), |c| c.label.clone())
                })
                .collect();
            let request = SweepRequest {
                yaml: settings.to_yaml(family),
                file: family.recipe_file(),
                axes: axes.clone(),
                is_demo: family.is_demo,
                texts: app.texts.loaded.clone(),
            };
            app.sweep
                .started(axes.clone(), labels, family.recipe_file());
            app.start_job("sweeping");
            app.worker
                .send(crate::gui::worker::Command::Sweep(Box::new(request)));
        }
    });
    if let Err(why) = &axes {
        ui.colored_label(ui.visuals().error_fg_color, why);
    }
}

/// The metric the chart shows.
fn metric_ui(app: &mut Workbench, ui: &mut egui::Ui, results: &SweepResults) {
    let metrics = results.metrics();
    if metrics.is_empty() {
        return;
    }
    let shown = app.sweep.metric.clone().unwrap_or_default();
    ui.horizontal(|ui| {
        let label = ui.label("metric:");
        egui::ComboBox::from_id_salt("sweep metric")
            .selected_text(crate::gui::sweep::metric_label(&shown))
            .show_ui(ui, |ui| {
                for metric in &metrics {
                    let chosen = *metric == shown;
                    if ui
                        .selectable_label(chosen, crate::gui::sweep::metric_label(metric))
                        .clicked()
                    {
                        app.sweep.metric = Some(metric.clone());
                    }
                }
            })
            .response
            .labelled_by(label.id);
        if let Some(millis) = results.millis {
            ui.label(format!(
                "{} cells in {:.1} s",
                results.cells.len(),
                millis / 1e3
            ));
        }
    });
}

/// A value as the panel writes it: accuracies in percent with one decimal.
fn format_metric(metric: &str, value: f64) -> String {
    mergescope_core::eval::compare::format_value(metric, value)
}

/// The chart's unit for `metric` (accuracies are drawn in percent).
fn scale_of(metric: &str) -> f64 {
    if is_accuracy(metric) { 100.0 } else { 1.0 }
}

/// One parameter: the metric against its value, points as they arrive, the best one ringed.
/// Returns the index of a clicked cell.
fn line_ui(ui: &mut egui::Ui, results: &SweepResults, metric: &str) -> Option<usize> {
    let scale = scale_of(metric);
    let points: Vec<(usize, [f64; 2])> = results
        .cells
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let y = metric_value(&c.scores, metric)?;
            Some((i, [c.values[0], y * scale]))
        })
        .collect();
    let best = best_cell(&results.cells, metric);
    let x_label = results.labels.first().cloned().unwrap_or_default();
    let y_label = format!(
        "{}{}",
        crate::gui::sweep::metric_label(metric),
        if scale == 100.0 { " (%)" } else { "" }
    );
    let hover_x = x_label.clone();
    let hover_metric = metric.to_owned();
    // The whole range from the first cell on, and a y span of at least a point of accuracy:
    // cells fill in across a fixed frame, and a flat series looks flat.
    let axis = &results.axes[0];
    let (first, last) = (
        axis.values.iter().copied().fold(f64::INFINITY, f64::min),
        axis.values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max),
    );
    let (y_lo, y_hi) = points.iter().fold(
        (f64::INFINITY, f64::NEG_INFINITY),
        |(lo, hi), (_, [_, y])| (lo.min(*y), hi.max(*y)),
    );
    let (y_lo, y_hi) = if y_lo.is_finite() {
        chart::y_range(y_lo, y_hi, if scale == 100.0 { 1.0 } else { 1e-3 })
    } else {
        (0.0, scale)
    };
    let mut clicked = None;
    let shown = Plot::new("sweep-line")
        .height(320.0)
        .include_x(first)
        .include_x(last)
        .include_y(y_lo)
        .include_y(y_hi)
        .x_axis_label(x_label)
        .y_axis_label(y_label)
        .allow_scroll(false)
        .label_formatter(move |position| {
            let (egui_plot::HoverPosition::NearDataPoint { position, .. }
            | egui_plot::HoverPosition::Elsewhere { position }) = position;
            Some(format!(
                "{hover_x} = {:.4}\n{hover_metric} = {}",
                position.x,
                format_metric(&hover_metric, position.y / scale)
            ))
        })
        .show(ui, |plot| {
            let mut line: Vec<[f64; 2]> = points.iter().map(|(_, p)| *p).collect();
            line.sort_by(|a, b| a[0].total_cmp(&b[0]));
            plot.line(Line::new("", line.clone()));
            plot.points(Points::new("cells", line).radius(4.0).filled(true));
            if let Some(best) = best.and_then(|b| points.iter().find(|(i, _)| *i == b)) {
                plot.points(
                    Points::new("best", vec![best.1])
                        .radius(8.0)
                        .shape(MarkerShape::Circle)
                        .filled(false)
                        .color(BEST),
                );
            }
            points
                .iter()
                .map(|(i, [x, y])| (*i, plot.screen_from_plot(PlotPoint::new(*x, *y))))
                .collect::<Vec<_>>()
        });
    chart::name_plot(&shown.response, "sweep-line");
    // Each point is a button of its own on top of the plot: clicked, hovered and named for
    // screen readers (and tests) like a heatmap's cell.
    let axis_path = &results.axes[0].path;
    for (i, at) in shown.inner {
        if !shown.response.rect.contains(at) {
            continue;
        }
        let cell = &results.cells[i];
        let described = format!("{axis_path} = {}", cell.values[0]);
        let response = ui.interact(
            Rect::from_center_size(at, vec2(14.0, 14.0)),
            ui.make_persistent_id(("sweep point", i)),
            Sense::click(),
        );
        let label = format!("point {described}");
        response
            .widget_info(|| egui::WidgetInfo::labeled(egui::accesskit::Role::Button, true, &label));
        let value = metric_value(&cell.scores, metric)
            .map_or_else(String::new, |v| format_metric(metric, v));
        let response = response.on_hover_text(format!(
            "{described}\n{}: {value}\nclick to load these settings into the Merge panel",
            crate::gui::sweep::metric_label(metric)
        ));
        if response.clicked() {
            clicked = Some(i);
        }
    }
    clicked
}

/// Two parameters: a grid of painted cells (rows the first, columns the second), each with its
/// value when it fits, a colour bar with its scale, the best cell outlined. Returns the index of
/// a clicked cell.
fn heatmap_ui(ui: &mut egui::Ui, results: &SweepResults, metric: &str) -> Option<usize> {
    let [rows, columns] = [&results.axes[0], &results.axes[1]];
    let (n_rows, n_columns) = (rows.values.len(), columns.values.len());
    let values: Vec<Option<f64>> = (0..n_rows * n_columns)
        .map(|n| {
            results
                .cell(&[n / n_columns, n % n_columns])
                .and_then(|c| metric_value(&c.scores, metric))
                .filter(|v| v.is_finite())
        })
        .collect();
    let (lo, hi) = values
        .iter()
        .flatten()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    // A spread at float noise is no spread: such a map is drawn flat, not magnified.
    let spread = hi - lo;
    let flat = spread.is_nan() || spread <= 1e-9 * hi.abs().max(1.0);
    let position = |v: f64| {
        if flat {
            0.5
        } else {
            ((v - lo) / (hi - lo)) as f32
        }
    };
    let best = best_cell(&results.cells, metric).map(|i| results.cells[i].index.clone());

    ui.label(format!(
        "rows: {}   columns: {}",
        results.labels.first().map_or("", String::as_str),
        results.labels.get(1).map_or("", String::as_str)
    ));
    let label_width = 56.0;
    let bar_width = 110.0;
    let width = (ui.available_width() - label_width - bar_width).clamp(160.0, 900.0);
    let cell_width = width / n_columns as f32;
    let cell_height = (cell_width * 0.55).clamp(14.0, 34.0);
    let grid_height = cell_height * n_rows as f32;
    // Room above for the colour bar's top label, below for the column values.
    let top = 8.0;
    let (area, _) = ui.allocate_exact_size(
        vec2(
            label_width + width + bar_width,
            top + grid_height.max(40.0) + 30.0,
        ),
        Sense::hover(),
    );
    let grid = Rect::from_min_size(area.min + vec2(label_width, top), vec2(width, grid_height));
    let painter = ui.painter_at(area);
    let text_color = ui.visuals().text_color();
    let small = FontId::proportional(11.0);
    let described = |r: usize, c: usize| {
        format!(
            "{} = {}, {} = {}",
            rows.path, rows.values[r], columns.path, columns.values[c]
        )
    };
    let hover_text = |r: usize, c: usize| match values[r * n_columns + c] {
        Some(v) => format!(
            "{}\n{}: {}\nclick to load these settings into the Merge panel",
            described(r, c),
            crate::gui::sweep::metric_label(metric),
            format_metric(metric, v)
        ),
        None => format!("{}\nnot computed yet", described(r, c)),
    };
    // Up to 50 × 50 cells each is a named button (screen readers, tests); a larger grid is one
    // widget that finds the cell under the pointer, so a frame stays cheap.
    let named = n_rows * n_columns <= MAX_NAMED_CELLS;
    let mut clicked_at = None;
    for r in 0..n_rows {
        for c in 0..n_columns {
            let rect = Rect::from_min_size(
                grid.min + vec2(c as f32 * cell_width, r as f32 * cell_height),
                vec2(cell_width, cell_height),
            )
            .shrink(0.5);
            let value = values[r * n_columns + c];
            let fill = value.map_or(ui.visuals().faint_bg_color, |v| {
                chart::viridis(f64::from(position(v)))
            });
            painter.rect_filled(rect, 0.0, fill);
            // No value fits a cell narrower than about four characters: no text laid out.
            if let Some(v) = value
                && rect.width() > 28.0
            {
                let text = format_metric(metric, v);
                let ink = chart::text_on(fill);
                let galley = painter.layout_no_wrap(text, small.clone(), ink);
                if galley.size().x + 4.0 < rect.width() && galley.size().y < rect.height() {
                    painter.galley(rect.center() - galley.size() / 2.0, galley, ink);
                }
            }
            if best.as_deref() == Some([r, c].as_slice()) {
                painter.rect_stroke(rect, 0.0, Stroke::new(3.0, BEST), StrokeKind::Inside);
            }
            if named {
                let response = ui.interact(
                    rect,
                    ui.make_persistent_id(("sweep cell", r, c)),
                    Sense::click(),
                );
                response.widget_info(|| {
                    egui::WidgetInfo::labeled(
                        egui::accesskit::Role::Button,
                        true,
                        format!("cell {}", described(r, c)),
                    )
                });
                if response
                    .on_hover_ui(|ui| {
                        ui.label(hover_text(r, c));
                    })
                    .clicked()
                {
                    clicked_at = Some((r, c));
                }
            }
        }
    }
    if !named {
        let under = |at: egui::Pos2| {
            let offset = at - grid.min;
            let (c, r) = (offset.x / cell_width, offset.y / cell_height);
            (r >= 0.0 && c >= 0.0 && (r as usize) < n_rows && (c as usize) < n_columns)
                .then_some((r as usize, c as usize))
        };
        let response = ui.interact(grid, ui.make_persistent_id("sweep grid"), Sense::click());
        let pointed = response.hover_pos().and_then(under);
        let response = match pointed {
            Some((r, c)) => response.on_hover_ui_at_pointer(|ui| {
                ui.label(hover_text(r, c));
            }),
            None => response,
        };
        if response.clicked() {
            clicked_at = response.interact_pointer_pos().and_then(under);
        }
    }
    let clicked = clicked_at
        .filter(|&(r, c)| values[r * n_columns + c].is_some())
        .and_then(|(r, c)| results.cells.iter().position(|cell| cell.index == [r, c]));
    // Tick labels: every row; columns as many as fit.
    for (r, v) in rows.values.iter().enumerate() {
        painter.text(
            pos2(
                grid.min.x - 4.0,
                grid.min.y + (r as f32 + 0.5) * cell_height,
            ),
            Align2::RIGHT_CENTER,
            format!("{v}"),
            small.clone(),
            text_color,
        );
    }
    let every = (42.0 / cell_width).ceil().max(1.0) as usize;
    for (c, v) in columns.values.iter().enumerate().step_by(every) {
        painter.text(
            pos2(grid.min.x + (c as f32 + 0.5) * cell_width, grid.max.y + 4.0),
            Align2::CENTER_TOP,
            format!("{v}"),
            small.clone(),
            text_color,
        );
    }
    colour_bar(&painter, grid, metric, (lo, hi), flat, text_color);
    clicked
}

/// The colour scale beside the grid: the gradient and its values at both ends and the middle.
fn colour_bar(
    painter: &egui::Painter,
    grid: Rect,
    metric: &str,
    (lo, hi): (f64, f64),
    flat: bool,
    text_color: Color32,
) {
    if !lo.is_finite() {
        return;
    }
    let bar = Rect::from_min_size(
        pos2(grid.max.x + 14.0, grid.min.y),
        vec2(14.0, grid.height().max(40.0)),
    );
    let steps = 48;
    for k in 0..steps {
        let t = k as f32 / (steps - 1) as f32;
        // High values at the top.
        let y0 = bar.max.y - bar.height() * (k + 1) as f32 / steps as f32;
        let slice = Rect::from_min_max(
            pos2(bar.min.x, y0),
            pos2(bar.max.x, y0 + bar.height() / steps as f32 + 0.5),
        );
        painter.rect_filled(
            slice,
            0.0,
            chart::viridis(if flat { 0.5 } else { f64::from(t) }),
        );
    }
    painter.rect_stroke(bar, 0.0, Stroke::new(1.0, text_color), StrokeKind::Outside);
    let small = FontId::proportional(11.0);
    let ticks: Vec<(f32, f64)> = if flat {
        vec![(0.5, lo)]
    } else {
        vec![(0.0, lo), (0.5, (lo + hi) / 2.0), (1.0, hi)]
    };
    for (t, v) in ticks {
        let y = bar.max.y - bar.height() * t;
        painter.line_segment(
            [pos2(bar.max.x, y), pos2(bar.max.x + 4.0, y)],
            Stroke::new(1.0, text_color),
        );
        painter.text(
            pos2(bar.max.x + 6.0, y),
            Align2::LEFT_CENTER,
            format_metric(metric, v),
            small.clone(),
            text_color,
        );
    }
    let direction = if higher_is_better(metric) {
        "higher is better"
    } else {
        "lower is better"
    };
    painter.text(
        pos2(bar.min.x, bar.max.y + 4.0),
        Align2::LEFT_TOP,
        direction,
        small,
        text_color,
    );
}

/// The best cell in words, with a button that loads it.
fn best_ui(ui: &mut egui::Ui, results: &SweepResults, metric: &str) {
    let Some(i) = best_cell(&results.cells, metric) else {
        return;
    };
    let cell = &results.cells[i];
    let described: Vec<String> = results
        .axes
        .iter()
        .zip(&cell.values)
        .map(|(a, v)| format!("{} = {v}", a.path))
        .collect();
    let value =
        metric_value(&cell.scores, metric).map_or_else(String::new, |v| format_metric(metric, v));
    ui.horizontal(|ui| {
        ui.colored_label(BEST, "best (outlined):");
        ui.label(format!("{}: {value}", described.join(", ")));
    });
}

/// Loads cell `i`'s settings into the Merge panel and shows it.
fn load_cell(app: &mut Workbench, results: &SweepResults, i: usize) {
    let Some(family) = &app.family else {
        return;
    };
    let Some(cell) = results.cells.get(i) else {
        return;
    };
    match MergeSettings::from_recipe(&cell.recipe, &family.recipe_file(), family) {
        Ok(settings) => {
            app.settings = Some(settings);
            app.panel = Panel::Merge;
            let described: Vec<String> = results
                .axes
                .iter()
                .zip(&cell.values)
                .map(|(a, v)| format!("{} = {v}", a.path))
                .collect();
            app.notice = Some(Notice {
                error: false,
                text: format!("loaded the sweep's cell {}", described.join(", ")),
            });
        }
        Err(text) => {
            app.notice = Some(Notice {
                error: true,
                text: format!("cannot load the cell: {text}"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracies_read_in_percent() {
        assert_eq!(format_metric("mean/accuracy", 0.9234), "92.3%");
        assert_eq!(format_metric("mean retention", 0.5), "0.5000");
        assert_eq!(scale_of("upright/accuracy"), 100.0);
    }
}
