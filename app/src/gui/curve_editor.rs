//! A per-layer weight curve edited by dragging its control points: the points of a mergekit
//! gradient, spread evenly from the first layer to the last, with the weight each layer gets
//! drawn as a dot. A focused point also moves with the arrow keys.

use std::ops::RangeInclusive;

use egui::{Color32, Pos2, Rect, Sense, Stroke, Ui, pos2, vec2};

use super::state::{curve_at, curve_per_layer, round};

/// Radius of a control point's handle, and of the area that grabs it.
const HANDLE: f32 = 5.0;
const GRAB: f32 = 9.0;
/// How far one arrow-key press moves a focused point.
const KEY_STEP: f64 = 0.05;

/// Shows the editor for `points` over `layers` layers and returns whether a point moved.
/// `name` labels the points for screen readers and tests ("upright point 3").
pub fn curve_editor(
    ui: &mut Ui,
    name: &str,
    points: &mut [f64],
    layers: usize,
    range: RangeInclusive<f64>,
    width: f32,
) -> bool {
    let size = vec2(width, 96.0);
    let (rect, _) = ui.allocate_exact_size(size, Sense::hover());
    // Handles sit inside the frame, so the plot is inset by a handle's size.
    let plot = rect.shrink2(vec2(GRAB, HANDLE + 2.0));
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
    let at = |t: f64, w: f64| pos2(x_of(t), y_of(w) as f32);

    let visuals = ui.visuals().clone();
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 2.0, visuals.extreme_bg_color);
    for (w, strong) in [(0.0, true), (1.0, false)] {
        if (lo..=hi).contains(&w) {
            let y = y_of(w) as f32;
            let color = visuals.widgets.noninteractive.bg_stroke.color;
            let stroke = Stroke::new(if strong { 1.0 } else { 0.5 }, color);
            painter.hline(plot.x_range(), y, stroke);
        }
    }
    let faint = visuals.weak_text_color();
    let font = egui::FontId::proportional(10.0);
    painter.text(
        rect.left_top() + vec2(2.0, 1.0),
        egui::Align2::LEFT_TOP,
        format!("{hi}"),
        font.clone(),
        faint,
    );
    painter.text(
        rect.left_bottom() + vec2(2.0, -1.0),
        egui::Align2::LEFT_BOTTOM,
        format!("{lo}"),
        font.clone(),
        faint,
    );
    if layers > 1 {
        painter.text(
            rect.right_bottom() + vec2(-2.0, -1.0),
            egui::Align2::RIGHT_BOTTOM,
            format!("layer {}", layers - 1),
            font,
            faint,
        );
    }

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
        painter.circle_filled(at(t, w), 2.0, visuals.text_color());
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
        let fill = if active {
            visuals.strong_text_color()
        } else {
            accent
        };
        let center = at(t, points[j]);
        painter.circle(
            center,
            if active { HANDLE + 1.5 } else { HANDLE },
            fill,
            Stroke::new(1.0, Color32::from_gray(40)),
        );
        response.on_hover_text(format!(
            "point {} of {k}: weight {:.2}; drag it, or focus it and press Up/Down",
            j + 1,
            points[j]
        ));
    }
    changed
}
