//! A per-layer weight curve edited by dragging its control points: the points of a mergekit
//! gradient, spread evenly from the first layer to the last, with the weight each layer gets
//! drawn as a dot, over axes (layer, weight) with a zero line. Negative weights (the model's
//! task is subtracted) and weights outside the editor's range are drawn in the error colour.
//! A focused point also moves with the arrow keys. Below the editor: shapes for every curve at
//! once, and the attention/MLP split (module filters on lambda).

use std::ops::RangeInclusive;

use egui::{Align2, Color32, FontId, Pos2, Rect, Sense, Stroke, Ui, pos2, vec2};
use mergescope_core::layout::ModuleKind;

use super::state::{
    CurvePreset, MergeSettings, ModuleFilter, OpenFamily, curve_at, curve_mean, curve_per_layer,
    round,
};

/// Radius of a control point's handle, and of the area that grabs it.
const HANDLE: f32 = 5.0;
const GRAB: f32 = 9.0;
/// How far one arrow-key press moves a focused point.
const KEY_STEP: f64 = 0.05;
/// Room for the y axis (title and ticks) and the x axis (ticks).
const LEFT_AXIS: f32 = 40.0;
const BOTTOM_AXIS: f32 = 16.0;
const HEIGHT: f32 = 120.0;
/// A flat curve at 0 would stay 0 under every shape: shapes scale this instead.
const SHAPE_SCALE_AT_ZERO: f64 = 0.3;

/// What is unusual about a weight, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Negative,
    OutOfRange,
}

/// A weight outside `range` is marked as such; a negative one (in range) as negative.
pub fn mark(w: f64, range: &RangeInclusive<f64>) -> Option<Mark> {
    if !range.contains(&w) {
        Some(Mark::OutOfRange)
    } else if w < 0.0 {
        Some(Mark::Negative)
    } else {
        None
    }
}

fn mark_text(w: f64, range: &RangeInclusive<f64>) -> Option<String> {
    Some(match mark(w, range)? {
        Mark::Negative => {
            "negative: this model's task vector is subtracted on these layers".to_owned()
        }
        Mark::OutOfRange => format!(
            "outside this editor's range ({} to {}), drawn at its edge; dragging it brings it \
             back into range",
            range.start(),
            range.end()
        ),
    })
}

/// Layers whose index is written under the x axis: all of them when few, else about eight.
fn layer_ticks(layers: usize) -> Vec<usize> {
    if layers <= 1 {
        return vec![0];
    }
    let step = layers.div_ceil(8).max(1);
    let mut ticks: Vec<usize> = (0..layers).step_by(step).collect();
    if ticks.last() != Some(&(layers - 1)) {
        ticks.push(layers - 1);
    }
    ticks
}

/// Shows the editor for `points` over `layers` layers and returns whether a point moved.
/// `name` labels the points for screen readers and tests ("upright point 3"); `quantity` is
/// what the curve gives each layer ("weight", "t"), its y axis' title.
pub fn curve_editor(
    ui: &mut Ui,
    name: &str,
    quantity: &str,
    points: &mut [f64],
    layers: usize,
    range: RangeInclusive<f64>,
    width: f32,
) -> bool {
    let size = vec2(width, HEIGHT);
    let (rect, _) = ui.allocate_exact_size(size, Sense::hover());
    // Handles sit inside the frame, so the plot is inset by a handle's size.
    let frame = Rect::from_min_max(
        rect.min + vec2(LEFT_AXIS, 0.0),
        rect.max - vec2(0.0, BOTTOM_AXIS),
    );
    let plot = frame.shrink2(vec2(GRAB, HANDLE + 2.0));
    let (lo, hi) = (*range.start(), *range.end());
    let y_of = |w: f64| egui::remap(w, lo..=hi, f64::from(plot.bottom())..=f64::from(plot.top()));
    let w_of = |y: f32| {
        egui::remap(
            f64::from(y),
            f64::from(plot.bottom())..=f64::from(plot.top()),
            lo..=hi,
        )
    };
    let x_of = |t: f64| plot.left() + plot.width() * t as f32;
    // Out-of-range weights are drawn at the edge they passed.
    let at = |t: f64, w: f64| pos2(x_of(t), y_of(w.clamp(lo, hi)) as f32);

    let visuals = ui.visuals().clone();
    let error = visuals.error_fg_color;
    let painter = ui.painter_at(rect);
    painter.rect_filled(frame, 2.0, visuals.extreme_bg_color);
    axes(
        ui, &painter, rect, frame, plot, layers, quantity, &range, &y_of,
    );

    // The curve, and the weight each layer ends up with.
    let accent = visuals.selection.bg_fill;
    let line: Vec<Pos2> = (0..=64)
        .map(|s| {
            let t = f64::from(s) / 64.0;
            at(t, curve_at(points, t))
        })
        .collect();
    painter.add(egui::Shape::line(line, Stroke::new(1.5, accent)));
    for (l, w) in curve_per_layer(points, layers).into_iter().enumerate() {
        let t = if layers > 1 {
            l as f64 / (layers - 1) as f64
        } else {
            1.0
        };
        let color = if mark(w, &range).is_some() {
            error
        } else {
            visuals.text_color()
        };
        painter.circle_filled(at(t, w), 2.0, color);
    }

    let k = points.len();
    let mut changed = false;
    for j in 0..k {
        let t = if k > 1 {
            j as f64 / (k - 1) as f64
        } else {
            0.5
        };
        let center = at(t, points[j]);
        let id = ui.make_persistent_id(("curve point", name, j));
        let grab = Rect::from_center_size(center, vec2(2.0 * GRAB, 2.0 * GRAB));
        let response = ui.interact(grab, id, Sense::click_and_drag());
        let label = format!("{name} point {}", j + 1);
        let value = points[j];
        response.widget_info(|| egui::WidgetInfo::slider(true, value, &label));
        let mut moved = None;
        if response.dragged()
            && let Some(pointer) = response.interact_pointer_pos()
        {
            moved = Some(w_of(pointer.y));
        }
        if response.has_focus() {
            let step = ui.input(|i| {
                i.num_presses(egui::Key::ArrowUp) as f64
                    - i.num_presses(egui::Key::ArrowDown) as f64
            });
            if step != 0.0 {
                moved = Some(points[j] + step * KEY_STEP);
            }
        }
        if let Some(w) = moved {
            let w = round(w.clamp(lo, hi));
            if w != points[j] {
                points[j] = w;
                changed = true;
            }
        }
        let active = response.dragged() || response.hovered() || response.has_focus();
        let marked = mark(points[j], &range).is_some();
        let fill = match (marked, active) {
            (true, _) => error,
            (false, true) => visuals.strong_text_color(),
            (false, false) => accent,
        };
        let ring = if marked && active {
            Stroke::new(2.0, visuals.strong_text_color())
        } else {
            Stroke::new(1.0, Color32::from_gray(40))
        };
        let center = at(t, points[j]);
        painter.circle(
            center,
            if active { HANDLE + 1.5 } else { HANDLE },
            fill,
            ring,
        );
        let mut text = format!(
            "point {} of {k}: {quantity} {:.2}; drag it, or focus it and press Up/Down",
            j + 1,
            points[j]
        );
        if let Some(why) = mark_text(points[j], &range) {
            text.push('\n');
            text.push_str(&why);
        }
        response.on_hover_text(text);
    }
    changed
}

/// The axes: weight ticks with the zero line drawn strong and the negative band tinted, layer
/// ticks, and both titles.
#[allow(clippy::too_many_arguments)] // one painter's geometry, computed once by the caller
fn axes(
    ui: &Ui,
    painter: &egui::Painter,
    rect: Rect,
    frame: Rect,
    plot: Rect,
    layers: usize,
    quantity: &str,
    range: &RangeInclusive<f64>,
    y_of: &dyn Fn(f64) -> f64,
) {
    let visuals = ui.visuals();
    let faint = visuals.weak_text_color();
    let font = FontId::proportional(11.0);
    let (lo, hi) = (*range.start(), *range.end());
    if lo < 0.0 {
        // Negative weights subtract a task: the band below zero is tinted.
        let zero = (y_of(0.0) as f32).min(frame.bottom());
        painter.rect_filled(
            Rect::from_x_y_ranges(frame.x_range(), zero..=frame.bottom()),
            0.0,
            visuals.error_fg_color.gamma_multiply(0.08),
        );
    }
    let grid = visuals.widgets.noninteractive.bg_stroke.color;
    for w in [lo, 0.0, 1.0, hi] {
        if !range.contains(&w) {
            continue;
        }
        let y = y_of(w) as f32;
        if w == 0.0 {
            painter.hline(
                frame.x_range(),
                y,
                Stroke::new(1.5, visuals.text_color().gamma_multiply(0.7)),
            );
        } else if w == 1.0 {
            painter.hline(plot.x_range(), y, Stroke::new(0.5, grid));
        }
        painter.text(
            pos2(frame.left() - 3.0, y),
            Align2::RIGHT_CENTER,
            format!("{w}"),
            font.clone(),
            faint,
        );
    }
    // The y title, turned to read upwards along the axis.
    let title = ui.fonts_mut(|f| f.layout_no_wrap(quantity.to_owned(), font.clone(), faint));
    let pos = pos2(rect.left() + 1.0, frame.center().y + title.size().x / 2.0);
    painter.add(
        egui::epaint::TextShape::new(pos, title, faint).with_angle(-std::f32::consts::FRAC_PI_2),
    );
    for l in layer_ticks(layers) {
        let t = if layers > 1 {
            l as f64 / (layers - 1) as f64
        } else {
            0.5
        };
        let x = plot.left() + plot.width() * t as f32;
        painter.vline(
            x,
            frame.bottom()..=frame.bottom() + 3.0,
            Stroke::new(1.0, faint),
        );
        painter.text(
            pos2(x, frame.bottom() + 3.0),
            Align2::CENTER_TOP,
            format!("{l}"),
            font.clone(),
            faint,
        );
    }
    painter.text(
        pos2(frame.left() - 3.0, frame.bottom() + 3.0),
        Align2::RIGHT_TOP,
        "layer",
        font,
        faint,
    );
}

/// A shape for every model's curve at once, each keeping its own mean weight over depth.
/// Returns whether the curves changed.
pub fn shape_every_curve_ui(ui: &mut Ui, curves: &mut [Vec<f64>], layers: usize) -> bool {
    let chosen = shape_menu(
        ui,
        egui::Id::unique("shape every curve"),
        "shape of every curve",
        110.0,
        "Reshape every model's curve at once; each keeps its own mean weight over depth",
    );
    let Some(preset) = chosen else {
        return false;
    };
    for curve in curves.iter_mut() {
        *curve = shaped(preset, curve, layers);
    }
    true
}

/// A menu of the curve shapes, each with its explanation; the one chosen this frame.
pub fn shape_menu(
    ui: &mut Ui,
    id: egui::Id,
    label: &str,
    width: f32,
    hover: &str,
) -> Option<CurvePreset> {
    let mut chosen = None;
    egui::ComboBox::new(id, label)
        .selected_text("choose...")
        .width(width)
        .show_ui(ui, |ui| {
            for preset in CurvePreset::ALL {
                if ui
                    .selectable_label(false, preset.label())
                    .on_hover_text(preset.help())
                    .clicked()
                {
                    chosen = Some(preset);
                }
            }
        })
        .response
        .on_hover_text(hover);
    chosen
}

/// `curve` reshaped as `preset`, at its own mean weight.
pub fn shaped(preset: CurvePreset, curve: &[f64], layers: usize) -> Vec<f64> {
    let mean = curve_mean(curve, layers);
    preset.points(if mean.abs() < 1e-9 {
        SHAPE_SCALE_AT_ZERO
    } else {
        mean
    })
}

/// Module filters that split a family's block tensors into attention and MLP: substrings of
/// its tensor names, tried in order (attention first), each catching only tensors of its kind
/// that no earlier filter caught.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleSplit {
    pub attention: Vec<String>,
    pub mlp: Vec<String>,
    /// How many tensors each side catches.
    pub attention_tensors: usize,
    pub mlp_tensors: usize,
}

impl ModuleSplit {
    /// The split of `family`'s tensors, from the module names it offers as filters.
    pub fn of(family: &OpenFamily) -> Self {
        let kinds: Vec<ModuleKind> = family
            .tensor_names
            .iter()
            .map(|n| ModuleKind::classify(n))
            .collect();
        let attention = |k: ModuleKind| {
            matches!(
                k,
                ModuleKind::AttnQ
                    | ModuleKind::AttnK
                    | ModuleKind::AttnV
                    | ModuleKind::AttnO
                    | ModuleKind::AttnQkv
            )
        };
        let mlp = |k: ModuleKind| {
            matches!(
                k,
                ModuleKind::MlpGate | ModuleKind::MlpUp | ModuleKind::MlpDown
            )
        };
        let suggestions = family.module_suggestions();
        let mut taken = vec![false; kinds.len()];
        let mut split = Self::default();
        let sides: [(&dyn Fn(ModuleKind) -> bool, bool); 2] = [(&attention, true), (&mlp, false)];
        for (wanted, is_attention) in sides {
            loop {
                // The filter catching the most untaken tensors, all of the wanted kind.
                let best = suggestions
                    .iter()
                    .filter(|s| !split.attention.contains(s) && !split.mlp.contains(s))
                    .map(|s| {
                        let hits: Vec<usize> = family
                            .tensor_names
                            .iter()
                            .enumerate()
                            .filter(|(i, n)| {
                                !taken[*i]
                                    && mergescope_core::merge::recipe::filter_matches(
                                        Some(s.as_str()),
                                        n,
                                    )
                            })
                            .map(|(i, _)| i)
                            .collect();
                        (s, hits)
                    })
                    .filter(|(_, hits)| !hits.is_empty() && hits.iter().all(|&i| wanted(kinds[i])))
                    // The first in the names' order among equals.
                    .min_by_key(|(_, hits)| std::cmp::Reverse(hits.len()));
                let Some((filter, hits)) = best else {
                    break;
                };
                for &i in &hits {
                    taken[i] = true;
                }
                if is_attention {
                    split.attention.push(filter.clone());
                    split.attention_tensors += hits.len();
                } else {
                    split.mlp.push(filter.clone());
                    split.mlp_tensors += hits.len();
                }
            }
        }
        split
    }

    pub fn is_empty(&self) -> bool {
        self.attention.is_empty() || self.mlp.is_empty()
    }

    /// `filters` with the split's filters first (attention, then MLP), at `attention` and
    /// `mlp` lambda; other filters the user set follow unchanged.
    pub fn apply(&self, filters: &mut Vec<ModuleFilter>, attention: f64, mlp: f64) {
        filters.retain(|f| !self.attention.contains(&f.filter) && !self.mlp.contains(&f.filter));
        let new = self
            .attention
            .iter()
            .map(|f| (f, attention))
            .chain(self.mlp.iter().map(|f| (f, mlp)))
            .map(|(filter, lambda)| ModuleFilter {
                filter: filter.clone(),
                lambda,
            });
        filters.splice(0..0, new);
    }
}

/// The attention/MLP split: two lambdas and a button that writes them as module filters.
pub fn attention_mlp_split_ui(ui: &mut Ui, family: &OpenFamily, settings: &mut MergeSettings) {
    let split = ModuleSplit::of(family);
    let id = ui.make_persistent_id("attention mlp split");
    let (mut attention, mut mlp) = ui.data_mut(|d| *d.get_temp_mut_or(id, (1.0_f64, 0.5_f64)));
    ui.horizontal(|ui| {
        ui.label("attention/MLP split:");
        ui.add(
            egui::DragValue::new(&mut attention)
                .range(0.0..=2.0)
                .speed(0.01)
                .prefix("attention λ "),
        );
        ui.add(
            egui::DragValue::new(&mut mlp)
                .range(0.0..=2.0)
                .speed(0.01)
                .prefix("MLP λ "),
        );
        let quote = |list: &[String]| {
            list.iter()
                .map(|f| format!("\"{f}\""))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let explain = if split.is_empty() {
            "No attention and MLP tensors are recognised in these models' names.".to_owned()
        } else {
            format!(
                "Sets lambda by module, the same for every model: tensors whose names contain \
                 {} ({} attention tensors) take the attention λ, those containing {} ({} MLP \
                 tensors) the MLP λ. Written as module filters (below; first match wins, so \
                 attention comes first). The weight curves stay as they are: a weight here \
                 depends on the layer, not on the module.",
                quote(&split.attention),
                split.attention_tensors,
                quote(&split.mlp),
                split.mlp_tensors
            )
        };
        let button = ui
            .add_enabled(!split.is_empty(), egui::Button::new("Set module filters"))
            .on_hover_text(&explain)
            .on_disabled_hover_text(&explain);
        if button.clicked() {
            split.apply(&mut settings.filters, round(attention), round(mlp));
        }
    });
    ui.data_mut(|d| d.insert_temp(id, (attention, mlp)));
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn family(names: &[&str]) -> OpenFamily {
        OpenFamily {
            base: PathBuf::from("/m/base"),
            models: vec![PathBuf::from("/m/a")],
            members: Vec::new(),
            issues: Vec::new(),
            is_demo: false,
            builtin: None,
            tensor_names: names.iter().map(|n| (*n).to_owned()).collect(),
            layers: 2,
            language_model: None,
        }
    }

    #[test]
    fn weights_are_marked_negative_or_out_of_range() {
        let range = -1.0..=2.0;
        assert_eq!(mark(0.5, &range), None);
        assert_eq!(mark(0.0, &range), None);
        assert_eq!(mark(-0.01, &range), Some(Mark::Negative));
        assert_eq!(mark(2.5, &range), Some(Mark::OutOfRange));
        assert_eq!(mark(-3.0, &range), Some(Mark::OutOfRange));
        assert!(mark_text(-0.5, &range).unwrap().contains("subtracted"));
    }

    #[test]
    fn layer_ticks_keep_the_ends() {
        assert_eq!(layer_ticks(4), [0, 1, 2, 3]);
        assert_eq!(layer_ticks(32), [0, 4, 8, 12, 16, 20, 24, 28, 31]);
        assert_eq!(layer_ticks(1), [0]);
    }

    #[test]
    fn the_split_catches_attention_then_mlp_and_nothing_else() {
        let llama = family(&[
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.1.self_attn.q_proj.weight",
            "model.layers.1.mlp.up_proj.weight",
            "lm_head.weight",
        ]);
        let split = ModuleSplit::of(&llama);
        assert_eq!(
            (split.attention.as_slice(), split.mlp.as_slice()),
            (
                ["self_attn".to_owned()].as_slice(),
                ["mlp".to_owned()].as_slice()
            )
        );
        assert_eq!((split.attention_tensors, split.mlp_tensors), (3, 3));

        let mut filters = vec![
            ModuleFilter {
                filter: "mlp".to_owned(),
                lambda: 0.1,
            },
            ModuleFilter {
                filter: "embed_tokens".to_owned(),
                lambda: 0.0,
            },
        ];
        split.apply(&mut filters, 1.0, 0.5);
        let got: Vec<(&str, f64)> = filters
            .iter()
            .map(|f| (f.filter.as_str(), f.lambda))
            .collect();
        assert_eq!(
            got,
            [("self_attn", 1.0), ("mlp", 0.5), ("embed_tokens", 0.0)]
        );

        // Names without attention or MLP tensors give no split.
        assert!(ModuleSplit::of(&family(&["conv.weight", "fc.weight"])).is_empty());
    }

    #[test]
    fn shapes_keep_each_curves_mean() {
        assert_eq!(
            shaped(CurvePreset::Rising, &[0.4, 0.4], 4),
            CurvePreset::Rising.points(0.4)
        );
        // A curve at 0 takes a shape at a small weight rather than staying flat.
        assert_eq!(
            shaped(CurvePreset::InverseV, &[0.0, 0.0], 4),
            CurvePreset::InverseV.points(SHAPE_SCALE_AT_ZERO)
        );
    }
}
