//! Pareto: search the front of merges over the Merge panel's per-model weights, see it as a
//! scatter of two objectives and in parallel coordinates, and move a preference over the tasks
//! that gives, through the learned map, the merge that best serves it — previewed live, and
//! loaded into the Merge panel (and so exported) as it moves.

use egui_plot::{HoverPosition, Line, MarkerShape, Plot, PlotPoint, PlotPoints, Points, Text};

use crate::gui::app::{Notice, Workbench};
use crate::gui::chart;
use crate::gui::pareto::{ParetoObjective, ParetoRequest, ParetoState, linked};
use crate::gui::state::OpenFamily;
use crate::gui::worker::Command;

const FRONT: egui::Color32 = egui::Color32::from_rgb(230, 90, 40);
const OTHER: egui::Color32 = egui::Color32::from_rgb(140, 140, 150);
const INPUT: egui::Color32 = egui::Color32::from_rgb(60, 120, 220);
/// Parallel coordinates stop here below the reference: merges that wreck a task would squash
/// the range that matters.
const BELOW: f64 = -0.5;
const CHOSEN: egui::Color32 = egui::Color32::from_rgb(40, 170, 90);

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.heading("Pareto");
        ui.add_space(24.0);
        chart::folder_ui(ui);
    });
    let Some(family) = app.family.clone() else {
        ui.label("Open a family first.");
        return;
    };
    let Some(method) = app.settings.as_ref().map(|s| s.method.clone()) else {
        return;
    };
    ui.label(format!(
        "The front of {method} merges over each model's weight (the Merge panel's other settings held); \
         every point is a real evaluation. Then drag the preference: the map gives the merge that best serves it."
    ));
    settings_ui(app, ui, &family);
    if app.pareto.objectives.is_empty() {
        if !app.pareto.running {
            ui.label("No search yet.");
        }
        return;
    }
    ui.separator();
    summary_ui(&app.pareto, &mut app.notice, ui);
    ui.separator();
    ui.columns(2, |columns| {
        preference_ui(app, &mut columns[0], &family);
        applied_preview_ui(app, &mut columns[1], &family);
    });
    ui.separator();
    ui.columns(2, |columns| {
        scatter_ui(app, &mut columns[0]);
        parallel_ui(&app.pareto, &mut app.notice, &mut columns[1]);
    });
    ui.separator();
    front_table_ui(app, ui);
}

fn settings_ui(app: &mut Workbench, ui: &mut egui::Ui, family: &OpenFamily) {
    let state = &mut app.pareto;
    ui.horizontal(|ui| {
        let label = |o: &ParetoObjective| match o {
            ParetoObjective::Demo => "demo accuracy",
            ParetoObjective::Retention => "retention (data-free)",
            ParetoObjective::Perplexity => "perplexity (NLL per domain)",
            ParetoObjective::Command { .. } => "command",
        };
        egui::ComboBox::from_label("objective")
            .selected_text(label(&state.objective))
            .show_ui(ui, |ui| {
                if family.is_demo {
                    ui.selectable_value(
                        &mut state.objective,
                        ParetoObjective::Demo,
                        "demo accuracy",
                    );
                }
                if app.texts.loaded.is_some() {
                    ui.selectable_value(
                        &mut state.objective,
                        ParetoObjective::Perplexity,
                        "perplexity (NLL per domain)",
                    )
                    .on_hover_text(
                        "One objective per text domain of the Merge panel: the merge's mean \
                         token negative log-likelihood (the log of its perplexity), minimised",
                    );
                }
                ui.selectable_value(
                    &mut state.objective,
                    ParetoObjective::Retention,
                    "retention (data-free)",
                );
                if !matches!(state.objective, ParetoObjective::Command { .. })
                    && ui.selectable_label(false, "command").clicked()
                {
                    state.objective = ParetoObjective::Command {
                        command: String::new(),
                        maximize: String::new(),
                        minimize: String::new(),
                    };
                }
            });
        ui.add(
            egui::DragValue::new(&mut state.groups)
                .range(1..=4)
                .prefix("layer groups: "),
        )
        .on_hover_text(
            "One coefficient per model and group of consecutive layers (a mergekit gradient)",
        );
        ui.add(
            egui::DragValue::new(&mut state.lower)
                .range(-1.0..=state.upper - 0.1)
                .speed(0.01)
                .prefix("λ from "),
        );
        ui.add(
            egui::DragValue::new(&mut state.upper)
                .range(state.lower + 0.1..=3.0)
                .speed(0.01)
                .prefix("to "),
        );
        ui.add(
            egui::DragValue::new(&mut state.budget)
                .range(family.models.len() + 3..=1000)
                .prefix("budget: "),
        )
        .on_hover_text("Real evaluations in all, the input models' included");
        if matches!(state.objective, ParetoObjective::Demo) {
            ui.checkbox(&mut state.quick, "quick estimate")
                .on_hover_text(format!(
                    "Score on the first {} test images of each domain instead of all of them",
                    crate::gui::pareto::QUICK_SAMPLE
                ));
        }
        if matches!(state.objective, ParetoObjective::Perplexity) {
            ui.checkbox(&mut state.quick, "quick estimate")
                .on_hover_text(format!(
                    "Score on the first {} tokens of each domain instead of all of the text",
                    mergescope_core::eval::lm::perplexity::QUICK_TOKENS
                ));
        }
    });
    if let ParetoObjective::Command {
        command,
        maximize,
        minimize,
    } = &mut state.objective
    {
        ui.horizontal(|ui| {
            ui.label("command");
            ui.add(egui::TextEdit::singleline(command).hint_text("python eval.py {model}"));
            ui.label("maximize");
            ui.add(
                egui::TextEdit::singleline(maximize)
                    .desired_width(100.0)
                    .hint_text("accuracy"),
            );
            ui.label("minimize");
            ui.add(
                egui::TextEdit::singleline(minimize)
                    .desired_width(100.0)
                    .hint_text("loss"),
            );
        });
    }
    let (running, points) = (state.running, state.points.len());
    ui.horizontal(|ui| {
        if running {
            ui.spinner();
            ui.label(format!("searching: {points} points so far"));
            if ui.button("Cancel search").clicked() {
                app.worker.cancel();
            }
        } else if ui.button("Search the front").clicked() {
            start(app, family);
        }
    });
}

fn start(app: &mut Workbench, family: &OpenFamily) {
    let Some(settings) = &app.settings else {
        return;
    };
    let request = ParetoRequest {
        yaml: settings.to_yaml(family),
        file: family.recipe_file(),
        objective: app.pareto.objective.clone(),
        groups: app.pareto.groups,
        range: (app.pareto.lower, app.pareto.upper),
        budget: app.pareto.budget,
        quick: app.pareto.quick,
        texts: app.texts.loaded.clone(),
    };
    app.pareto.clear();
    app.pareto.running = true;
    app.start_job("Pareto search");
    app.worker.send(Command::Pareto(Box::new(request)));
}

fn summary_ui(state: &ParetoState, notice: &mut Option<Notice>, ui: &mut egui::Ui) {
    let front = state.on_front().iter().filter(|f| **f).count();
    let latest = state.rounds.last();
    ui.horizontal(|ui| {
        ui.strong(format!(
            "{} real evaluations, {front} on the front",
            state.points.len()
        ));
        if let Some(round) = latest {
            ui.label(format!(
                "· normalised hypervolume {:.4} (round {})",
                round.hypervolume_normalised, round.round
            ));
        }
        if let Some(outcome) = &state.outcome {
            ui.label(format!("· final {:.4}", outcome.hypervolume_normalised()));
        }
    })
    .response
    .on_hover_text(
        "Hypervolume of the front between the reference point (the base's scores) and the ideal \
         point (each objective's best input model), the box between them having volume 1",
    );
    ui.horizontal(|ui| {
        if state.rounds.len() > 1 {
            let history = chart::XyChart {
                series_title: "series".to_owned(),
                series: vec![chart::Series::new(
                    "hypervolume",
                    0,
                    state
                        .rounds
                        .iter()
                        .map(|r| [r.round as f64, r.hypervolume_normalised])
                        .collect(),
                )],
                height: 110.0,
                min_y_span: 0.01,
                ..chart::XyChart::new("hypervolume-history", "round", "hypervolume")
            };
            ui.vertical(|ui| {
                ui.set_width(320.0);
                chart::framed_ui(
                    ui,
                    notice,
                    "pareto-hypervolume",
                    "Hypervolume by round",
                    || history.csv(),
                    |ui| history.show(ui),
                );
            });
        }
        // The surrogates' fit, once the search fitted them.
        let fits = state.outcome.as_ref().map(|o| &o.surrogates);
        if let Some(surrogates) = fits {
            egui::Grid::new("surrogate-fit")
                .striped(true)
                .show(ui, |ui| {
                    ui.strong("surrogate");
                    ui.strong("leave-one-out R²");
                    ui.strong("RMSE");
                    ui.end_row();
                    for (o, s) in state.objectives.iter().zip(surrogates) {
                        ui.label(&o.name);
                        ui.label(format!("{:.3}", s.fit.loo_r2));
                        ui.label(o.display(s.fit.loo_rmse));
                        ui.end_row();
                    }
                });
        }
    });
}

/// The preference widget, and what moving it does: coefficients from the map into the Merge
/// panel's settings, and a live preview.
fn preference_ui(app: &mut Workbench, ui: &mut egui::Ui, family: &OpenFamily) {
    let names = app.pareto.labels();
    ui.horizontal(|ui| {
        ui.strong("Preference over the tasks");
        if app.pareto.map.is_none() {
            ui.label("(the map is learned when the search ends)");
        }
        ui.checkbox(&mut app.pareto.snap, "snap to evaluated points")
            .on_hover_text(
                "Use the evaluated merge with the best Tchebycheff score for the preference",
            );
    });
    let before = app.pareto.preference.clone();
    match names.len() {
        0 | 1 => {}
        2 => {
            let mut first = app.pareto.preference[0];
            ui.add(
                egui::Slider::new(&mut first, 0.0..=1.0)
                    .text(format!("on {} (the rest on {})", names[0], names[1])),
            );
            app.pareto.set_preference(&[first, 1.0 - first]);
        }
        3 => {
            let mut w = app.pareto.preference.clone();
            // Not justified: the triangle keeps its own size in a column.
            ui.horizontal(|ui| triangle_ui(ui, &names, &mut w));
            app.pareto.set_preference(&w);
        }
        _ => {
            for j in 0..names.len() {
                let mut v = app.pareto.preference[j];
                let changed = ui
                    .add(egui::Slider::new(&mut v, 0.0..=1.0).text(&names[j]))
                    .changed();
                if changed {
                    let w = linked(&app.pareto.preference, j, v);
                    app.pareto.set_preference(&w);
                }
            }
        }
    }
    // Only a move of the preference changes the Merge panel's settings.
    if app.pareto.preference != before {
        apply_preference(app, family);
    }
    if let Some(x) = app.pareto.coefficients() {
        let outcome = app
            .pareto
            .outcome
            .as_ref()
            .expect("coefficients need a search");
        ui.label(format!(
            "coefficients: {}",
            outcome
                .space
                .coefficient_names()
                .iter()
                .zip(&x)
                .map(|(n, v)| format!("{n} {v:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if let Some(predicted) = app.pareto.predicted(&x) {
            ui.label(format!(
                "surrogate predicts: {}",
                app.pareto
                    .objectives
                    .iter()
                    .zip(&predicted)
                    .zip(&names)
                    .map(|((o, v), name)| format!("{name} {}", o.display(*v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        ui.horizontal(|ui| {
            if app.pareto.applied.as_ref() != Some(&app.pareto.preference)
                && ui
                    .button("Use in the Merge panel")
                    .on_hover_text("Moving the preference does this too")
                    .clicked()
            {
                apply_preference(app, family);
            }
            save_map_ui(app, ui);
        });
    }
}

/// The real merge of the preference's coefficients, previewed as the Merge panel does, once
/// they are the Merge panel's settings.
fn applied_preview_ui(app: &mut Workbench, ui: &mut egui::Ui, family: &OpenFamily) {
    if app.pareto.applied.as_ref() != Some(&app.pareto.preference) {
        if app.pareto.map.is_some() {
            ui.label("Move the preference to merge and preview what it gives.");
        }
        return;
    }
    let Some(yaml) = app.settings.as_ref().map(|s| s.to_yaml(family)) else {
        return;
    };
    super::preview::request(app, ui, &yaml);
    super::preview::scores_of(app, ui, &yaml);
}

/// Saves the map as JSON (`mergescope pareto --map` reads it).
fn save_map_ui(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.add(
        egui::TextEdit::singleline(&mut app.pareto.map_path)
            .desired_width(220.0)
            .hint_text("map.json"),
    )
    .on_hover_text("Where the preference map is saved");
    if ui.button("Save the map").clicked()
        && let Some(map) = &app.pareto.map
    {
        let path = std::path::PathBuf::from(app.pareto.map_path.trim());
        app.notice = Some(match map.save(&path) {
            Ok(()) => Notice {
                error: false,
                text: format!(
                    "saved the map to {}; `mergescope pareto --map` turns preferences into recipes with it",
                    path.display()
                ),
            },
            Err(e) => Notice {
                error: true,
                text: mergescope_core::one_line(&e.to_string()),
            },
        });
    }
}

/// Puts the coefficients the preference gives into the Merge panel's settings.
fn apply_preference(app: &mut Workbench, family: &OpenFamily) {
    let Some(x) = app.pareto.coefficients() else {
        return;
    };
    load_coefficients(app, family, &x);
    app.pareto.applied = Some(app.pareto.preference.clone());
}

/// A point's coefficients into the Merge panel: weights, or per-layer curves with K points.
pub fn load_coefficients(app: &mut Workbench, family: &OpenFamily, x: &[f64]) {
    let (Some(settings), Some(outcome)) = (&mut app.settings, &app.pareto.outcome) else {
        return;
    };
    let groups = outcome.space.groups;
    let rounded = |v: f64| (v * 1e4).round() / 1e4;
    for (i, values) in x.chunks(groups).enumerate().take(settings.weights.len()) {
        if groups == 1 {
            settings.weights[i] = rounded(values[0]);
        } else {
            settings.curves[i] = values.iter().map(|&v| rounded(v)).collect();
        }
    }
    if groups == 1 {
        settings.set_per_layer(false, family.layers);
    } else {
        settings.per_layer = true;
    }
}

/// A draggable point in a triangle whose corners are the three objectives.
fn triangle_ui(ui: &mut egui::Ui, names: &[String], w: &mut [f64]) {
    let size = egui::vec2(280.0, 210.0);
    let (rect, response) = ui.allocate_exact_size(size, egui::Sense::click_and_drag());
    response
        .widget_info(|| egui::WidgetInfo::labeled(egui::Role::Slider, true, "preference triangle"));
    // Inset so the corners' names fit beside and below them.
    let corners = [
        egui::pos2(rect.center().x, rect.top() + 16.0),
        egui::pos2(rect.left() + 40.0, rect.bottom() - 18.0),
        egui::pos2(rect.right() - 40.0, rect.bottom() - 18.0),
    ];
    if let Some(pos) = response.interact_pointer_pos() {
        let b = barycentric(pos, corners);
        w.copy_from_slice(&mergescope_core::pareto::simplex::project(&b));
    }
    let painter = ui.painter_at(rect);
    let stroke = ui.visuals().widgets.noninteractive.fg_stroke;
    painter.add(egui::Shape::closed_line(corners.to_vec(), stroke));
    for (corner, name) in corners.iter().zip(names) {
        let below = corner.y > rect.center().y;
        painter.text(
            *corner + egui::vec2(0.0, if below { 9.0 } else { -9.0 }),
            egui::Align2::CENTER_CENTER,
            name,
            egui::FontId::proportional(12.0),
            ui.visuals().text_color(),
        );
    }
    let point = corners[0].to_vec2() * w[0] as f32
        + corners[1].to_vec2() * w[1] as f32
        + corners[2].to_vec2() * w[2] as f32;
    painter.circle_filled(point.to_pos2(), 6.0, CHOSEN);
}

/// Barycentric coordinates of `p` in the triangle, clipped to it.
fn barycentric(p: egui::Pos2, [a, b, c]: [egui::Pos2; 3]) -> Vec<f64> {
    let (v0, v1, v2) = (b - a, c - a, p - a);
    let d00 = v0.dot(v0);
    let d01 = v0.dot(v1);
    let d11 = v1.dot(v1);
    let d20 = v2.dot(v0);
    let d21 = v2.dot(v1);
    let denom = d00 * d11 - d01 * d01;
    let v = (d11 * d20 - d01 * d21) / denom;
    let w = (d00 * d21 - d01 * d20) / denom;
    let u = 1.0 - v - w;
    [u, v, w].iter().map(|x| f64::from(x.max(0.0))).collect()
}

/// The scatter of two objectives: every point, the front highlighted, the inputs named, the
/// current preference's merge and its Tchebycheff ray.
fn scatter_ui(app: &mut Workbench, ui: &mut egui::Ui) {
    let state = &mut app.pareto;
    let m = state.objectives.len();
    let names = state.labels();
    ui.horizontal(|ui| {
        for (axis, label) in [(0, "x"), (1, "y")] {
            let value = if axis == 0 {
                &mut state.axes.0
            } else {
                &mut state.axes.1
            };
            egui::ComboBox::from_label(label)
                .selected_text(names[*value].clone())
                .show_ui(ui, |ui| {
                    for (j, name) in names.iter().enumerate().take(m) {
                        ui.selectable_value(value, j, name);
                    }
                });
        }
    });
    let (a, b) = state.axes;
    let on_front = state.on_front();
    let percent = |j: usize| {
        if state.objectives[j].unit_interval {
            100.0
        } else {
            1.0
        }
    };
    let (pa, pb) = (percent(a), percent(b));
    let at = |scores: &[f64]| [scores[a] * pa, scores[b] * pb];
    let mut clicked = None;
    let coefficients = state.coefficients();
    let predicted = coefficients.as_ref().and_then(|x| state.predicted(x));
    // Which evaluated point each marker of a series is, for the hover.
    let series = [
        ("evaluated", false, false),
        ("front", true, false),
        ("input models", false, true),
    ];
    let members: Vec<Vec<usize>> = series
        .iter()
        .map(|&(_, f, input)| {
            (0..state.points.len())
                .filter(|&i| is_input(&state.points[i]) == input && (input || on_front[i] == f))
                .collect()
        })
        .collect();
    let (oa, ob) = (&state.objectives[a], &state.objectives[b]);
    let unit = |pct: f64| if pct == 100.0 { " (%)" } else { "" };
    let readout = |what: String, scores: &[f64]| {
        format!(
            "{what}\n{}: {}\n{}: {}",
            oa.name,
            oa.display(scores[a]),
            ob.name,
            ob.display(scores[b])
        )
    };
    let plotted = state
        .points
        .iter()
        .map(|p| at(&p.scores))
        .chain(predicted.as_deref().map(at));
    let (lo, hi) = plotted.fold(
        ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]),
        |(lo, hi), [x, y]| ([lo[0].min(x), lo[1].min(y)], [hi[0].max(x), hi[1].max(y)]),
    );
    let mut plot = Plot::new("pareto-scatter")
        .height(300.0)
        .x_axis_label(format!("{}{}", oa.name, unit(pa)))
        .y_axis_label(format!("{}{}", ob.name, unit(pb)))
        .allow_scroll(false)
        .label_formatter(|pos| {
            let HoverPosition::NearDataPoint {
                plot_name, index, ..
            } = pos
            else {
                return None;
            };
            if *plot_name == "preference (predicted)" {
                return Some(readout(
                    "the preference's merge (predicted)".to_owned(),
                    predicted.as_deref()?,
                ));
            }
            let s = series.iter().position(|(name, ..)| name == plot_name)?;
            let i = *members[s].get(*index)?;
            let p = &state.points[i];
            Some(readout(format!("#{i}: {}", p.source.describe()), &p.scores))
        });
    if lo[0].is_finite() && hi[0].is_finite() {
        // Noise in the scores is not stretched over the plot (at least 1 % or 0.01 wide).
        let (x0, x1) = chart::y_range(lo[0], hi[0], 0.01 * pa);
        let (y0, y1) = chart::y_range(lo[1], hi[1], 0.01 * pb);
        plot = plot.include_x(x0).include_x(x1).include_y(y0).include_y(y1);
    }
    let scatter = |ui: &mut egui::Ui| {
        chart::legend_ui(
            ui,
            [
                ("evaluated", OTHER),
                ("front", FRONT),
                ("input models", INPUT),
                ("preference (predicted)", CHOSEN),
            ],
        );
        let shown = plot.show(ui, |plot| {
            let pick = |f: bool, input: bool| -> PlotPoints<'static> {
                state
                    .points
                    .iter()
                    .zip(on_front)
                    .filter(|(p, front)| is_input(p) == input && (input || **front == f))
                    .map(|(p, _)| at(&p.scores))
                    .collect()
            };
            plot.points(
                Points::new("evaluated", pick(false, false))
                    .color(OTHER)
                    .radius(3.0),
            );
            plot.points(
                Points::new("front", pick(true, false))
                    .color(FRONT)
                    .radius(5.0)
                    .filled(true),
            );
            plot.points(
                Points::new("input models", pick(false, true))
                    .color(INPUT)
                    .radius(5.0)
                    .shape(MarkerShape::Square),
            );
            for p in &state.points {
                if let mergescope_core::pareto::Source::Input(label) = &p.source {
                    let [x, y] = at(&p.scores);
                    // Unnamed: the labels are not legend entries.
                    plot.text(Text::new("", PlotPoint::new(x, y), label.clone()).color(INPUT));
                }
            }
            if let Some(predicted) = &predicted {
                plot.points(
                    Points::new("preference (predicted)", vec![at(predicted)])
                        .color(CHOSEN)
                        .radius(7.0)
                        .shape(MarkerShape::Diamond)
                        .filled(true),
                );
            }
            if let Some(ray) = ray(state, a, b) {
                plot.line(
                    Line::new(
                        "preference ray",
                        ray.into_iter()
                            .map(|p| [p[0] * pa, p[1] * pb])
                            .collect::<PlotPoints<'_>>(),
                    )
                    .color(CHOSEN),
                );
            }
            if plot.response().clicked()
                && let Some(pointer) = plot.pointer_coordinate()
            {
                let target = plot.screen_from_plot(pointer);
                clicked = state
                    .points
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let [x, y] = at(&p.scores);
                        (
                            i,
                            plot.screen_from_plot(PlotPoint::new(x, y)).distance(target),
                        )
                    })
                    .filter(|(_, d)| *d < 12.0)
                    .min_by(|x, y| x.1.total_cmp(&y.1))
                    .map(|(i, _)| i);
            }
        });
        chart::name_plot(&shown.response, "pareto-scatter");
    };
    chart::framed_ui(
        ui,
        &mut app.notice,
        "pareto-scatter",
        "Every evaluated merge, the front highlighted (click a point to load it)",
        || points_csv(state, false),
        scatter,
    );
    if let Some(i) = clicked {
        load_point(app, i);
    }
}

/// The Tchebycheff ray of the preference in the two objectives' units: from the ideal point
/// down the line on which w_a (1 − g_a) = w_b (1 − g_b).
fn ray(state: &ParetoState, a: usize, b: usize) -> Option<Vec<[f64; 2]>> {
    let n = state.normalisation.as_ref()?;
    state.map.as_ref()?;
    let w = |j: usize| state.preference[j].max(mergescope_core::pareto::scalarize::ZERO_WEIGHT);
    let to_score = |j: usize, g: f64| {
        let f = n.reference[j] + g * (n.ideal[j] - n.reference[j]);
        state.objectives[j].direction.score(f)
    };
    // Down to where one of the two reaches the reference: past it the ray leaves the box.
    let t_end = w(a).min(w(b));
    Some(
        (0..=10)
            .map(|k| {
                let t = t_end * f64::from(k) / 10.0;
                [to_score(a, 1.0 - t / w(a)), to_score(b, 1.0 - t / w(b))]
            })
            .collect(),
    )
}

/// Parallel coordinates of every objective, normalised (0: the reference, 1: the ideal).
fn parallel_ui(state: &ParetoState, notice: &mut Option<Notice>, ui: &mut egui::Ui) {
    let names = state.labels();
    let on_front = state.on_front();
    let predicted = state.coefficients().and_then(|x| state.predicted(&x));
    let axis_names = names.clone();
    let line_name = |i: usize| format!("#{i}: {}", state.points[i].source.describe());
    let body = |ui: &mut egui::Ui| {
        ui.label(format!(
            "0 = reference (the base), 1 = ideal (each objective's best input); below {BELOW} drawn at {BELOW}"
        ));
        chart::legend_ui(
            ui,
            [
                ("evaluated", OTHER),
                ("front", FRONT),
                ("input models", INPUT),
                ("preference (predicted)", CHOSEN),
            ],
        );
        let shown = Plot::new("pareto-parallel")
            .height(300.0)
            .allow_scroll(false)
            .x_axis_label("objective")
            .y_axis_label("normalised score")
            .label_formatter(|pos| {
                let HoverPosition::NearDataPoint {
                    plot_name,
                    position,
                    ..
                } = pos
                else {
                    return None;
                };
                let objective = names.get(position.x.round().max(0.0) as usize)?;
                Some(format!("{plot_name}\n{objective}: {:.3}", position.y))
            })
            .x_axis_formatter(move |mark, _| {
                let k = mark.value.round();
                if (mark.value - k).abs() < 1e-9 && k >= 0.0 {
                    axis_names.get(k as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .show(ui, |plot| {
                for (i, (p, front)) in state.points.iter().zip(on_front).enumerate() {
                    let Some(g) = state.normalised(&p.scores) else {
                        continue;
                    };
                    let (color, width) = if is_input(p) {
                        (INPUT, 1.5)
                    } else if *front {
                        (FRONT, 1.5)
                    } else {
                        (OTHER.gamma_multiply(0.5), 0.7)
                    };
                    let series: PlotPoints<'_> = g
                        .iter()
                        .enumerate()
                        .map(|(j, v)| [j as f64, v.max(BELOW)])
                        .collect();
                    plot.line(Line::new(line_name(i), series).color(color).width(width));
                }
                if let Some(g) = predicted.as_ref().and_then(|p| state.normalised(p)) {
                    let series: PlotPoints<'_> = g
                        .iter()
                        .enumerate()
                        .map(|(j, v)| [j as f64, v.max(BELOW)])
                        .collect();
                    plot.line(
                        Line::new("preference (predicted)", series)
                            .color(CHOSEN)
                            .width(3.0),
                    );
                }
            });
        chart::name_plot(&shown.response, "pareto-parallel");
    };
    chart::framed_ui(
        ui,
        notice,
        "pareto-parallel",
        "All objectives, normalised",
        || points_csv(state, true),
        body,
    );
}

fn is_input(p: &mergescope_core::pareto::search::Point) -> bool {
    matches!(p.source, mergescope_core::pareto::Source::Input(_))
}

/// Every evaluated point as CSV: its number, where it comes from, whether it is on the front,
/// each objective's score (raw, or normalised as the parallel coordinates show it) and its
/// coefficients.
fn points_csv(state: &ParetoState, normalised: bool) -> String {
    let on_front = state.on_front();
    let coefficients = state.points.first().map_or(0, |p| p.coefficients.len());
    let coefficient_names: Vec<String> = match &state.outcome {
        Some(o) => o.space.coefficient_names(),
        None => (0..coefficients)
            .map(|k| format!("coefficient {k}"))
            .collect(),
    };
    let mut header = vec!["point".to_owned(), "from".to_owned(), "on front".to_owned()];
    header.extend(state.objectives.iter().map(|o| o.name.clone()));
    header.extend(coefficient_names);
    let rows = state.points.iter().enumerate().map(|(i, p)| {
        let scores = if normalised {
            state.normalised(&p.scores)
        } else {
            Some(p.scores.clone())
        };
        let mut row = vec![i.to_string(), p.source.describe(), on_front[i].to_string()];
        match scores {
            Some(scores) => row.extend(scores.iter().map(f64::to_string)),
            None => row.extend(state.objectives.iter().map(|_| String::new())),
        }
        row.extend(p.coefficients.iter().map(f64::to_string));
        row
    });
    chart::csv_of(&header, rows)
}

/// The front as a table, each point with a button that loads it into the Merge panel.
fn front_table_ui(app: &mut Workbench, ui: &mut egui::Ui) {
    let state = &app.pareto;
    let on_front = state.on_front();
    let names = state.labels();
    let mut load = None;
    ui.strong("The front (click a row's button, or a point in the scatter, to load it into the Merge panel)");
    egui::Grid::new("pareto-front")
        .striped(true)
        .show(ui, |ui| {
            ui.label("");
            ui.strong("from");
            for name in &names {
                ui.strong(name);
            }
            ui.strong("coefficients");
            ui.end_row();
            for (i, (p, front)) in state.points.iter().zip(on_front).enumerate() {
                if !front {
                    continue;
                }
                if ui.button(format!("Load #{i}")).clicked() {
                    load = Some(i);
                }
                ui.label(p.source.describe());
                for (o, s) in state.objectives.iter().zip(&p.scores) {
                    ui.label(o.display(*s));
                }
                ui.label(
                    p.coefficients
                        .iter()
                        .map(|c| format!("{c:.2}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                );
                ui.end_row();
            }
        });
    if let Some(i) = load {
        load_point(app, i);
    }
}

/// Loads evaluated point `i` into the Merge panel.
pub fn load_point(app: &mut Workbench, i: usize) {
    let Some(family) = app.family.clone() else {
        return;
    };
    let Some(point) = app.pareto.points.get(i).cloned() else {
        return;
    };
    if app.pareto.outcome.is_none() {
        app.notice = Some(Notice {
            error: false,
            text: "points load into the Merge panel once the search has finished".to_owned(),
        });
        return;
    }
    load_coefficients(app, &family, &point.coefficients);
    app.notice = Some(Notice {
        error: false,
        text: format!(
            "loaded point #{i} ({}) into the Merge panel; Export writes it",
            point.source.describe()
        ),
    });
}
