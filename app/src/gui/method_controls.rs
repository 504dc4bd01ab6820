//! The Merge panel's controls that come from a method's declaration rather than from per-model
//! weights: which open fine-tunes take part, the method's shared numbers (`eps`, `tol`,
//! `max_iter`, `select_topk`, ...), its shared curve number (slerp's `t`) as a slider, a
//! per-layer curve or per-module curves, and the banner of a recipe shown read-only.

use egui::Ui;

use super::curve_editor::{ModuleSplit, curve_editor, shape_menu, shaped};
use super::help;
use super::methods::{SliderRange, base_use, is_integer, shared_numbers, shared_range};
use super::state::{MergeSettings, ModuleCurve, OpenFamily, ReadOnly, model_name, resample};

/// Curves have between 2 and this many control points.
pub const MAX_POINTS: usize = 9;

/// The mergekit gradient-slerp example's module curves: attention rises over depth, MLP falls.
const ATTENTION_T: [f64; 5] = [0.0, 0.5, 0.3, 0.7, 1.0];
const MLP_T: [f64; 5] = [1.0, 0.5, 0.7, 0.3, 0.0];

/// A checkbox per open fine-tune (does it take part?), the optional base's switch, and what
/// is wrong with the count, if anything. Returns the problem.
pub fn models_ui(ui: &mut Ui, family: &OpenFamily, settings: &mut MergeSettings) -> Option<String> {
    ui.horizontal_wrapped(|ui| {
        ui.label("models in the merge:").on_hover_text(help::param(
            &settings.method,
            "include",
            None,
            None,
        ));
        for (i, path) in family.models.iter().enumerate() {
            let name = model_name(path);
            ui.checkbox(&mut settings.included[i], format!("include {name}"))
                .on_hover_text(help::param(&settings.method, "include", None, None));
        }
        if base_use(&settings.method) == mergescope_core::merge::BaseUse::Optional {
            ui.separator();
            ui.checkbox(&mut settings.use_base, "against the base")
                .on_hover_text(help::param(
                    &settings.method,
                    "against the base",
                    None,
                    None,
                ));
        }
    });
    let problem = settings.problem();
    if let Some(problem) = &problem {
        ui.colored_label(ui.visuals().error_fg_color, problem);
    }
    problem
}

/// A slider over `range`, logarithmic where it spans orders of magnitude, in whole steps for
/// integers.
fn number_slider<'a>(
    value: &'a mut f64,
    range: &SliderRange,
    integer: bool,
    text: String,
) -> egui::Slider<'a> {
    let mut slider = egui::Slider::new(value, range.range.clone())
        .text(text)
        .logarithmic(range.logarithmic);
    if integer {
        slider = slider.integer();
    }
    slider
}

/// A slider per shared number of the method (`eps`, `tol`, `max_iter`, `select_topk`, ...).
pub fn shared_numbers_ui(ui: &mut Ui, settings: &mut MergeSettings) {
    let method = settings.method.clone();
    let names = shared_numbers(&method);
    if names.is_empty() {
        return;
    }
    ui.horizontal_wrapped(|ui| {
        for name in names {
            let range = shared_range(&method, name);
            let mut value = settings.shared_value(name);
            let slider = number_slider(
                &mut value,
                &range,
                is_integer(&method, name),
                name.to_owned(),
            );
            let hover = help::param(&method, name, Some(range.range.clone()), None);
            if ui.add(slider).on_hover_text(hover).changed() {
                settings.shared.insert(name.to_owned(), value);
            }
        }
    });
}

/// The method's shared curve number `t`: a slider, or (per layer) a curve for every tensor
/// that no module curve catches, below the module curves.
pub fn shared_curve_ui(ui: &mut Ui, family: &OpenFamily, settings: &mut MergeSettings, t: &str) {
    let method = settings.method.clone();
    let range = shared_range(&method, t);
    if !settings.per_layer {
        let mut value = settings.shared_value(t);
        let hover = help::param(&method, t, Some(range.range.clone()), None);
        if ui
            .add(number_slider(&mut value, &range, false, t.to_owned()))
            .on_hover_text(hover)
            .changed()
        {
            settings.shared.insert(t.to_owned(), value);
        }
        return;
    }
    // A logarithmic number is dragged on a curve between 0 and its slider's start × 10.
    let curve_range = if range.logarithmic {
        0.0..=(range.start * 10.0).max(1e-6)
    } else {
        range.range.clone()
    };
    let width = (ui.available_width() - 220.0).max(240.0);
    module_curves_ui(ui, family, settings, t, &curve_range, width);
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.set_width(200.0);
            ui.strong(if settings.module_curves.is_empty() {
                format!("{t} over depth")
            } else {
                format!("{t}: every other tensor")
            })
            .on_hover_text(help::param(&method, "per-layer t", None, None));
            points_ui(ui, "t", &mut settings.shared_curve, family.layers);
        });
        curve_editor(
            ui,
            t,
            t,
            &mut settings.shared_curve,
            family.layers,
            curve_range.clone(),
            width,
        );
    });
}

/// One curve per module filter (tried in order), each removable, and ways to add them: a
/// module at a time, or attention and MLP as in mergekit's gradient-slerp example.
fn module_curves_ui(
    ui: &mut Ui,
    family: &OpenFamily,
    settings: &mut MergeSettings,
    t: &str,
    range: &std::ops::RangeInclusive<f64>,
    width: f32,
) {
    let explained = help::param(&settings.method, "per-module t", None, None);
    ui.horizontal(|ui| {
        let unused: Vec<String> = family
            .module_suggestions()
            .into_iter()
            .filter(|m| !settings.module_curves.iter().any(|c| c.filter == *m))
            .collect();
        egui::ComboBox::new("add module curve", format!("add a per-module {t} curve"))
            .selected_text("choose...")
            .show_ui(ui, |ui| {
                for module in unused {
                    let text = format!("{module} ({} tensors)", family.matches(&module));
                    if ui.selectable_label(false, text).clicked() {
                        settings.module_curves.push(ModuleCurve {
                            filter: module,
                            points: settings.shared_curve.clone(),
                        });
                    }
                }
            })
            .response
            .on_hover_text(&explained);
        let split = ModuleSplit::of(family);
        if ui
            .add_enabled(
                !split.is_empty(),
                egui::Button::new(format!("attention/MLP {t} curves")),
            )
            .on_hover_text(format!(
                "{explained}\nWrites attention ({}) rising and MLP ({}) falling, as mergekit's \
                 gradient-slerp example does.",
                split.attention.join(", "),
                split.mlp.join(", ")
            ))
            .clicked()
        {
            let curves = split
                .attention
                .iter()
                .map(|f| (f, ATTENTION_T))
                .chain(split.mlp.iter().map(|f| (f, MLP_T)));
            settings.module_curves = curves
                .map(|(filter, points)| ModuleCurve {
                    filter: filter.clone(),
                    points: points.to_vec(),
                })
                .collect();
        }
    });
    let mut remove = None;
    for (k, curve) in settings.module_curves.iter_mut().enumerate() {
        ui.horizontal_top(|ui| {
            ui.vertical(|ui| {
                ui.set_width(200.0);
                let label = ui.label(format!("{t} filter {}", k + 1));
                ui.add(egui::TextEdit::singleline(&mut curve.filter).desired_width(150.0))
                    .labelled_by(label.id)
                    .on_hover_text(&explained);
                ui.label(format!("{} tensors", family.matches(&curve.filter)));
                points_ui(ui, &curve.filter.clone(), &mut curve.points, family.layers);
                if ui.button(format!("Remove {t} filter {}", k + 1)).clicked() {
                    remove = Some(k);
                }
            });
            let name = format!("{t} {}", curve.filter);
            curve_editor(
                ui,
                &name,
                t,
                &mut curve.points,
                family.layers,
                range.clone(),
                width,
            );
        });
    }
    if let Some(k) = remove {
        settings.module_curves.remove(k);
    }
}

/// A curve's shape presets and its point count.
pub fn points_ui(ui: &mut Ui, name: &str, points: &mut Vec<f64>, layers: usize) {
    let chosen = shape_menu(
        ui,
        egui::Id::unique(("preset", name)),
        "shape",
        90.0,
        &format!("Reset {name}'s curve to a shape"),
    );
    if let Some(preset) = chosen {
        *points = shaped(preset, points, layers);
    }
    ui.horizontal(|ui| {
        let k = points.len();
        if ui
            .add_enabled(k < MAX_POINTS, egui::Button::new("+ point"))
            .on_hover_text(format!("One more control point on {name}'s curve"))
            .clicked()
        {
            *points = resample(points, k + 1);
        }
        if ui
            .add_enabled(k > 2, egui::Button::new("- point"))
            .on_hover_text(format!("One control point fewer on {name}'s curve"))
            .clicked()
        {
            *points = resample(points, k - 1);
        }
    });
}

/// A recipe shown as text: the reason in one line, and a way back to the panel's controls.
/// Returns whether the user chose the controls (fresh settings for the open models).
pub fn read_only_ui(ui: &mut Ui, read_only: &ReadOnly) -> bool {
    ui.colored_label(
        ui.visuals().warn_fg_color,
        format!("edited as text: {}", read_only.reason),
    );
    ui.label(
        "The preview, Export and Save run this recipe as it is; edit it below, or start over \
         with the panel's controls.",
    );
    ui.button("Start over with the panel's controls")
        .on_hover_text("Replaces this recipe by the panel's own settings for the open models (undo brings it back)")
        .clicked()
}
