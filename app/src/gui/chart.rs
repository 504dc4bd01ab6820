//! Charts that can be read exactly: perceptual colour maps, a heatmap with its colour bar and
//! values on hover, egui_plot charts with axis titles, a legend beside the data, hover that
//! names the series and the point, and bounds that do not magnify float noise; and for every
//! chart a Save PNG (the window's own pixels, cropped to the chart) and a Save CSV (its data).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use egui::{Align2, Color32, FontId, Id, Pos2, Rect, Sense, Stroke, Ui, pos2, vec2};

use crate::gui::app::Notice;

// ---------------------------------------------------------------------------------------------
// Colour maps

/// matplotlib's viridis at nine evenly spaced stops: perceptually uniform, lightness rising
/// from dark violet to yellow, so order reads the same in light and dark themes and in grey.
const VIRIDIS: [[u8; 3]; 9] = [
    [68, 1, 84],
    [71, 44, 122],
    [59, 81, 139],
    [44, 113, 142],
    [33, 144, 141],
    [39, 173, 129],
    [92, 200, 99],
    [170, 220, 50],
    [253, 231, 37],
];

/// Viridis at `t` in [0, 1] (clamped).
pub fn viridis(t: f64) -> Color32 {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (VIRIDIS.len() - 1) as f64;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |k: usize| (f64::from(a[k]) + (f64::from(b[k]) - f64::from(a[k])) * f).round() as u8;
    Color32::from_rgb(mix(0), mix(1), mix(2))
}

/// The ends of the diverging map (ColorBrewer RdBu's darker blue and red) and its light grey
/// centre, as Oklab lightness.
const DIVERGING_LOW: [u8; 3] = [33, 102, 172];
const DIVERGING_HIGH: [u8; 3] = [178, 24, 43];
const DIVERGING_CENTRE_LIGHTNESS: f64 = 0.94;

/// A diverging map at `t` in [0, 1]: blue below 0.5, light grey at 0.5, red above. Built in
/// Oklab with both ends at the same lightness and straight lines to the grey centre, so equal
/// distances from the centre look equally strong on either side.
pub fn diverging(t: f64) -> Color32 {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let low = srgb_to_oklab(DIVERGING_LOW);
    let high = srgb_to_oklab(DIVERGING_HIGH);
    let end_lightness = (low[0] + high[0]) / 2.0;
    let s = 2.0 * t - 1.0;
    let end = if s < 0.0 { low } else { high };
    let u = s.abs();
    oklab_to_color(
        DIVERGING_CENTRE_LIGHTNESS + (end_lightness - DIVERGING_CENTRE_LIGHTNESS) * u,
        end[1] * u,
        end[2] * u,
    )
}

/// Oklab lightness of a colour, 0 (black) to 1 (white).
pub fn lightness(c: Color32) -> f64 {
    srgb_to_oklab([c.r(), c.g(), c.b()])[0]
}

/// Dark or light text, whichever reads on `fill`.
pub fn text_on(fill: Color32) -> Color32 {
    if lightness(fill) > 0.66 {
        Color32::from_gray(15)
    } else {
        Color32::from_gray(245)
    }
}

fn to_linear(c: u8) -> f64 {
    let c = f64::from(c) / 255.0;
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn from_linear(x: f64) -> u8 {
    let x = x.clamp(0.0, 1.0);
    let c = if x <= 0.003_130_8 {
        12.92 * x
    } else {
        1.055 * x.powf(1.0 / 2.4) - 0.055
    };
    (c * 255.0).round() as u8
}

/// Björn Ottosson's Oklab (2020).
fn srgb_to_oklab([r, g, b]: [u8; 3]) -> [f64; 3] {
    let (r, g, b) = (to_linear(r), to_linear(g), to_linear(b));
    let l = (0.412_221_470_8 * r + 0.536_332_536_3 * g + 0.051_445_992_9 * b).cbrt();
    let m = (0.211_903_498_2 * r + 0.680_699_545_1 * g + 0.107_396_956_6 * b).cbrt();
    let s = (0.088_302_461_9 * r + 0.281_718_837_6 * g + 0.629_978_700_5 * b).cbrt();
    [
        0.210_454_255_3 * l + 0.793_617_785 * m - 0.004_072_046_8 * s,
        1.977_998_495_1 * l - 2.428_592_205 * m + 0.450_593_709_9 * s,
        0.025_904_037_1 * l + 0.782_771_766_2 * m - 0.808_675_766 * s,
    ]
}

fn oklab_to_color(l: f64, a: f64, b: f64) -> Color32 {
    let l_ = (l + 0.396_337_777_4 * a + 0.215_803_757_3 * b).powi(3);
    let m_ = (l - 0.105_561_345_8 * a - 0.063_854_172_8 * b).powi(3);
    let s_ = (l - 0.089_484_177_5 * a - 1.291_485_548 * b).powi(3);
    Color32::from_rgb(
        from_linear(4.076_741_662_1 * l_ - 3.307_711_591_3 * m_ + 0.230_969_929_2 * s_),
        from_linear(-1.268_438_004_6 * l_ + 2.609_757_401_1 * m_ - 0.341_319_396_5 * s_),
        from_linear(-0.004_196_086_3 * l_ - 0.703_418_614_7 * m_ + 1.707_614_701 * s_),
    )
}

/// Series colours that stay apart from each other and from both themes' backgrounds (Tableau
/// 10 without its yellow and grey).
const PALETTE: [Color32; 8] = [
    Color32::from_rgb(78, 121, 167),
    Color32::from_rgb(242, 142, 43),
    Color32::from_rgb(89, 161, 79),
    Color32::from_rgb(225, 87, 89),
    Color32::from_rgb(176, 122, 161),
    Color32::from_rgb(118, 183, 178),
    Color32::from_rgb(255, 157, 167),
    Color32::from_rgb(156, 117, 95),
];

/// The colour of series `i` (a model keeps its colour across charts).
pub fn series_color(i: usize) -> Color32 {
    PALETTE[i % PALETTE.len()]
}

// ---------------------------------------------------------------------------------------------
// Scales and numbers

/// How values map to colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorScale {
    /// Viridis from the smallest value to the largest.
    Sequential,
    /// Blue–grey–red, centred at 0 and symmetric (±the largest magnitude), for signed values.
    Diverging,
}

/// The range a heatmap's colours span: the finite values' min and max (sequential) or ±their
/// largest magnitude (diverging), leaving out the diagonal when asked (a model against itself
/// would set the scale and wash out the pairs). `None` when there is nothing to scale.
pub fn scale_range(
    values: &[Vec<Option<f64>>],
    exclude_diagonal: bool,
    scale: ColorScale,
) -> Option<(f64, f64)> {
    let finite = values.iter().enumerate().flat_map(|(i, row)| {
        row.iter()
            .enumerate()
            .filter(move |(j, _)| !(exclude_diagonal && i == *j))
            .filter_map(|(_, v)| v.filter(|v| v.is_finite()))
    });
    match scale {
        ColorScale::Sequential => finite.fold(None, |range, v| match range {
            None => Some((v, v)),
            Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
        }),
        ColorScale::Diverging => finite.map(f64::abs).reduce(f64::max).map(|m| (-m, m)),
    }
}

/// The colour of `value` on `scale` over `range`. A range narrower than float noise (relative
/// 1e-9) is flat: every value gets the middle colour rather than noise stretched over the map.
pub fn color_of(value: f64, (lo, hi): (f64, f64), scale: ColorScale) -> Color32 {
    let noise = 1e-9 * lo.abs().max(hi.abs()).max(f64::MIN_POSITIVE);
    let t = if hi - lo > noise {
        (value - lo) / (hi - lo)
    } else {
        0.5
    };
    match scale {
        ColorScale::Sequential => viridis(t),
        ColorScale::Diverging => diverging(t),
    }
}

/// `v` with `digits` significant digits, in plain notation from 1e-4 to 1e6.
pub fn fmt_sig(v: f64, digits: usize) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 {
        return "0".to_owned();
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-4..6).contains(&magnitude) {
        return format!("{v:.*e}", digits.saturating_sub(1));
    }
    let decimals = (digits as i32 - 1 - magnitude).max(0) as usize;
    format!("{v:.decimals$}")
}

/// The y range a plot shows for data spanning `lo..=hi`: at least `min_span` wide and at least
/// 2 % of the data's magnitude, centred on the data. A series that varies by float noise
/// (1e-7 around 0.3) is drawn flat instead of filling the plot with its noise.
pub fn y_range(lo: f64, hi: f64, min_span: f64) -> (f64, f64) {
    let span = (hi - lo)
        .max(min_span)
        .max(0.02 * lo.abs().max(hi.abs()))
        .max(f64::MIN_POSITIVE);
    if hi - lo >= span {
        return (lo, hi);
    }
    let centre = (lo + hi) / 2.0;
    (centre - span / 2.0, centre + span / 2.0)
}

// ---------------------------------------------------------------------------------------------
// Heatmap

/// A matrix of values painted as cells, with row and column labels, the value in each cell
/// where it fits, a hover text per cell, and a colour bar with its scale.
pub struct Heatmap<'a> {
    /// Names the figure: the colour bar's label and each cell's accessible name.
    pub title: &'a str,
    /// What rows and columns are ("layer", "module"), for the CSV's corner.
    pub axes: (&'a str, &'a str),
    pub rows: &'a [String],
    pub columns: &'a [String],
    /// `values[row][column]`; `None`: no value there.
    pub values: &'a [Vec<Option<f64>>],
    pub scale: ColorScale,
    /// Leave the diagonal off the colour scale (drawn grey, its value still shown).
    pub exclude_diagonal: bool,
    /// The hover text of cell (row, column), besides its value.
    pub hover: &'a dyn Fn(usize, usize) -> String,
    /// Rows are buttons (clicked rows come back in the response), one drawn selected.
    pub clickable_rows: bool,
    pub selected_row: Option<usize>,
}

/// What happened to a heatmap this frame.
#[derive(Clone, Debug, Default)]
pub struct HeatmapResponse {
    pub clicked_cell: Option<(usize, usize)>,
    pub clicked_row: Option<usize>,
    /// The colour scale's range, if any value is on it.
    pub range: Option<(f64, f64)>,
}

const MIN_CELL_WIDTH: f32 = 48.0;
const MAX_COLUMN_WIDTH: f32 = 110.0;
const MAX_ROW_LABEL: usize = 28;
const MAX_COLUMN_LABEL: usize = 14;
const BAR_WIDTH: f32 = 14.0;
const BAR_GAP: f32 = 10.0;
const BAR_STEPS: usize = 48;

/// A heatmap laid out: see [`Heatmap::measure`].
struct Measure {
    font: FontId,
    row_labels: Vec<Arc<egui::Galley>>,
    column_labels: Vec<Arc<egui::Galley>>,
    row_width: f32,
    cell_width: f32,
    row_height: f32,
    header: f32,
    grid: egui::Vec2,
    ticks: Vec<f64>,
    tick_labels: Vec<Arc<egui::Galley>>,
    bar_title: Arc<egui::Galley>,
    bar_height: f32,
    size: egui::Vec2,
}

impl Heatmap<'_> {
    fn value(&self, row: usize, column: usize) -> Option<f64> {
        self.values.get(row)?.get(column).copied().flatten()
    }

    fn off_scale(&self, row: usize, column: usize) -> bool {
        self.exclude_diagonal && row == column
    }

    /// The caption of the colour bar and of the CSV: what the range spans.
    fn scale_caption(&self) -> &'static str {
        match (self.scale, self.exclude_diagonal) {
            (ColorScale::Sequential, false) => "min to max",
            (ColorScale::Sequential, true) => "off-diagonal min to max",
            (ColorScale::Diverging, false) => "centred at 0, ± the largest magnitude",
            (ColorScale::Diverging, true) => "centred at 0, ± the largest off-diagonal magnitude",
        }
    }

    /// The matrix as CSV: a header of column labels, then a row label and values per row
    /// (full precision; empty where there is no value).
    pub fn csv(&self) -> String {
        let mut header = vec![format!("{} \\ {}", self.axes.0, self.axes.1)];
        header.extend(self.columns.iter().cloned());
        let rows = self.rows.iter().enumerate().map(|(r, label)| {
            let mut line = vec![label.clone()];
            line.extend((0..self.columns.len()).map(|c| csv_number(self.value(r, c))));
            line
        });
        csv_of(&header, rows)
    }

    /// Lays the heatmap out: its labels, cell and colour bar sizes, and its whole size (so a
    /// caller can wrap before it).
    fn measure(&self, ui: &Ui, range: Option<(f64, f64)>) -> Measure {
        let font = egui::TextStyle::Body.resolve(ui.style());
        let text_color = ui.visuals().text_color();
        let layout = |ui: &Ui, text: String| {
            ui.fonts_mut(|f| f.layout_no_wrap(text, font.clone(), text_color))
        };
        let row_labels: Vec<_> = self
            .rows
            .iter()
            .map(|r| layout(ui, crate::gui::text::elide_middle(r, MAX_ROW_LABEL)))
            .collect();
        let column_labels: Vec<_> = self
            .columns
            .iter()
            .map(|c| layout(ui, crate::gui::text::elide_middle(c, MAX_COLUMN_LABEL)))
            .collect();
        let row_width = row_labels.iter().map(|g| g.size().x).fold(0.0, f32::max) + 10.0;
        let cell_width = column_labels
            .iter()
            .map(|g| g.size().x + 8.0)
            .fold(MIN_CELL_WIDTH, f32::max)
            .min(MAX_COLUMN_WIDTH);
        let row_height = font.size + 10.0;
        let header = font.size + 8.0;
        let grid = vec2(
            cell_width * self.columns.len() as f32,
            row_height * self.rows.len() as f32,
        );
        // The colour bar: its title above, ticks to its right.
        let ticks = range.map(|(lo, hi)| ticks(lo, hi)).unwrap_or_default();
        let tick_labels: Vec<_> = ticks.iter().map(|&v| layout(ui, fmt_sig(v, 3))).collect();
        let bar_title = layout(ui, self.title.to_owned());
        let tick_width = tick_labels.iter().map(|g| g.size().x).fold(0.0, f32::max);
        let bar_height = grid.y.max(4.0 * row_height);
        let bar_block = (BAR_WIDTH + 6.0 + tick_width).max(bar_title.size().x);
        let size = vec2(
            row_width + grid.x + BAR_GAP + bar_block,
            header + bar_height.max(grid.y) + 4.0,
        );
        Measure {
            font,
            row_labels,
            column_labels,
            row_width,
            cell_width,
            row_height,
            header,
            grid,
            ticks,
            tick_labels,
            bar_title,
            bar_height,
            size,
        }
    }

    /// The size [`Self::show`] takes.
    pub fn size(&self, ui: &Ui) -> egui::Vec2 {
        self.measure(
            ui,
            scale_range(self.values, self.exclude_diagonal, self.scale),
        )
        .size
    }

    pub fn show(&self, ui: &mut Ui) -> HeatmapResponse {
        let range = scale_range(self.values, self.exclude_diagonal, self.scale);
        let mut out = HeatmapResponse {
            range,
            ..HeatmapResponse::default()
        };
        let Measure {
            font,
            row_labels,
            column_labels,
            row_width,
            cell_width,
            row_height,
            header,
            grid,
            ticks,
            tick_labels,
            bar_title,
            bar_height,
            size,
        } = self.measure(ui, range);
        let visuals = ui.visuals().clone();
        let text_color = visuals.text_color();
        let (rect, _) = ui.allocate_exact_size(size, Sense::hover());
        let painter = ui.painter_at(rect.expand(1.0));
        let origin = rect.min + vec2(row_width, header);

        for (c, galley) in column_labels.into_iter().enumerate() {
            let centre = pos2(
                origin.x + cell_width * (c as f32 + 0.5),
                rect.top() + header / 2.0,
            );
            painter.galley(
                Align2::CENTER_CENTER.anchor_size(centre, galley.size()).min,
                galley,
                text_color,
            );
        }
        for (r, galley) in row_labels.into_iter().enumerate() {
            let row_rect = Rect::from_min_size(
                pos2(rect.left(), origin.y + row_height * r as f32),
                vec2(row_width - 4.0, row_height),
            );
            if self.clickable_rows {
                let label = self.rows[r].clone();
                let response = ui.interact(
                    row_rect,
                    ui.scope_id().with((self.title, "row", r)),
                    Sense::click(),
                );
                response.widget_info(|| {
                    egui::WidgetInfo::labeled(egui::accesskit::Role::Button, true, &label)
                });
                if self.selected_row == Some(r) {
                    painter.rect_filled(row_rect, 3.0, visuals.selection.bg_fill);
                } else if response.hovered() {
                    painter.rect_filled(row_rect, 3.0, visuals.widgets.hovered.weak_bg_fill);
                }
                if response.clicked() {
                    out.clicked_row = Some(r);
                }
                response.on_hover_text(format!("Select {label}"));
            }
            let pos = Align2::RIGHT_CENTER
                .anchor_size(row_rect.right_center() - vec2(4.0, 0.0), galley.size())
                .min;
            painter.galley(pos, galley, text_color);
        }
        for r in 0..self.rows.len() {
            for c in 0..self.columns.len() {
                let cell = Rect::from_min_size(
                    origin + vec2(cell_width * c as f32, row_height * r as f32),
                    vec2(cell_width, row_height),
                );
                if let Some(clicked) = self.cell_ui(ui, &painter, cell, (r, c), range, &font) {
                    out.clicked_cell = Some(clicked);
                }
            }
        }
        let bar = Rect::from_min_size(
            pos2(origin.x + grid.x + BAR_GAP, origin.y),
            vec2(BAR_WIDTH, bar_height),
        );
        painter.galley(
            pos2(bar.left(), rect.top() + (header - bar_title.size().y) / 2.0),
            bar_title,
            text_color,
        );
        self.colour_bar_ui(ui, &painter, bar, range, &ticks, tick_labels);
        out
    }

    /// One cell: its colour, its value where it fits, its hover text; `Some` when clicked.
    fn cell_ui(
        &self,
        ui: &Ui,
        painter: &egui::Painter,
        cell: Rect,
        (r, c): (usize, usize),
        range: Option<(f64, f64)>,
        font: &FontId,
    ) -> Option<(usize, usize)> {
        let visuals = ui.visuals();
        let value = self.value(r, c);
        let fill = match (value, range) {
            (Some(v), Some(range)) if v.is_finite() && !self.off_scale(r, c) => {
                color_of(v, range, self.scale)
            }
            _ => visuals.faint_bg_color,
        };
        let inner = cell.shrink(1.0);
        painter.rect_filled(inner, 2.0, fill);
        let id = ui.scope_id().with((self.title, r, c));
        let response = ui.interact(cell, id, Sense::click());
        let name = format!("{}: {}, {}", self.title, self.rows[r], self.columns[c]);
        response
            .widget_info(|| egui::WidgetInfo::labeled(egui::accesskit::Role::Cell, true, &name));
        if let Some(v) = value {
            let on = if fill == visuals.faint_bg_color {
                visuals.text_color()
            } else {
                text_on(fill)
            };
            let galley = ui.fonts_mut(|f| f.layout_no_wrap(fmt_sig(v, 3), font.clone(), on));
            if galley.size().x <= inner.width() - 4.0 && galley.size().y <= inner.height() {
                painter.galley(
                    Align2::CENTER_CENTER
                        .anchor_size(inner.center(), galley.size())
                        .min,
                    galley,
                    on,
                );
            }
        }
        if response.hovered() {
            painter.rect_stroke(
                inner,
                2.0,
                Stroke::new(2.0, visuals.strong_text_color()),
                egui::StrokeKind::Inside,
            );
            let mut text = format!(
                "{} × {}\n{}: {}",
                self.rows[r],
                self.columns[c],
                self.title,
                value.map_or_else(|| "no value".to_owned(), |v| fmt_sig(v, 4))
            );
            if self.off_scale(r, c) {
                text.push_str("\n(the diagonal: left off the colour scale)");
            }
            let more = (self.hover)(r, c);
            if !more.is_empty() {
                text.push('\n');
                text.push_str(&more);
            }
            hover_label(ui, &response, &text);
        }
        response.clicked().then_some((r, c))
    }

    fn colour_bar_ui(
        &self,
        ui: &Ui,
        painter: &egui::Painter,
        bar: Rect,
        range: Option<(f64, f64)>,
        ticks: &[f64],
        tick_labels: Vec<Arc<egui::Galley>>,
    ) {
        let visuals = ui.visuals();
        let response = ui.interact(
            bar,
            ui.scope_id().with((self.title, "colour bar")),
            Sense::hover(),
        );
        let Some((lo, hi)) = range else {
            painter.rect_filled(bar, 2.0, visuals.faint_bg_color);
            let label = format!("{} colour scale: no values", self.title);
            response.widget_info(|| {
                egui::WidgetInfo::labeled(egui::accesskit::Role::Image, true, &label)
            });
            return;
        };
        let mut mesh = egui::Mesh::default();
        for k in 0..BAR_STEPS {
            // Top is high.
            let (t0, t1) = (
                k as f32 / BAR_STEPS as f32,
                (k + 1) as f32 / BAR_STEPS as f32,
            );
            let value = hi - (hi - lo) * f64::from(t0 + t1) / 2.0;
            let slice = Rect::from_x_y_ranges(
                bar.x_range(),
                bar.top() + bar.height() * t0..=bar.top() + bar.height() * t1,
            );
            mesh.add_colored_rect(slice, color_of(value, (lo, hi), self.scale));
        }
        painter.add(mesh);
        painter.rect_stroke(
            bar,
            0.0,
            visuals.widgets.noninteractive.bg_stroke,
            egui::StrokeKind::Outside,
        );
        let y_of = |v: f64| {
            if hi > lo {
                bar.bottom() - bar.height() * ((v - lo) / (hi - lo)) as f32
            } else {
                bar.center().y
            }
        };
        for (&v, galley) in ticks.iter().zip(tick_labels) {
            let y = y_of(v);
            painter.hline(
                bar.right()..=bar.right() + 4.0,
                y,
                Stroke::new(1.0, visuals.text_color()),
            );
            let pos = Align2::LEFT_CENTER
                .anchor_size(pos2(bar.right() + 6.0, y), galley.size())
                .min;
            // Keep the end labels inside the bar's height.
            let pos = pos2(
                pos.x,
                pos.y
                    .clamp(bar.top() - 4.0, bar.bottom() + 4.0 - galley.size().y),
            );
            painter.galley(pos, galley, visuals.text_color());
        }
        let label = format!(
            "{} colour scale: {} to {}",
            self.title,
            fmt_sig(lo, 4),
            fmt_sig(hi, 4)
        );
        response
            .widget_info(|| egui::WidgetInfo::labeled(egui::accesskit::Role::Image, true, &label));
        if response.hovered() {
            hover_label(
                ui,
                &response,
                &format!(
                    "{}: colours from {} to {} ({})",
                    self.title,
                    fmt_sig(lo, 4),
                    fmt_sig(hi, 4),
                    self.scale_caption()
                ),
            );
        }
    }
}

/// A colour bar's ticks: the ends and the middle (0 on a diverging scale).
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    if hi - lo <= 1e-9 * lo.abs().max(hi.abs()) {
        return vec![lo];
    }
    vec![lo, (lo + hi) / 2.0, hi]
}

/// A tooltip shown at once while `response` is hovered (a chart's readout should not wait
/// for the tooltip delay).
fn hover_label(ui: &Ui, response: &egui::Response, text: &str) {
    egui::Tooltip::always_open(
        ui.ctx().clone(),
        response.layer_id,
        response.id,
        egui::PopupAnchor::Pointer,
    )
    .gap(12.0)
    .show(|ui| {
        ui.label(text);
    });
}

// ---------------------------------------------------------------------------------------------
// x–y charts (egui_plot)

/// One named series of an [`XyChart`].
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<[f64; 2]>,
    pub color: Color32,
}

impl Series {
    /// A series in palette colour `i`; non-finite points are dropped (egui_plot cannot bound
    /// them).
    pub fn new(name: impl Into<String>, i: usize, points: Vec<[f64; 2]>) -> Self {
        Self {
            name: name.into(),
            points: finite_points(points),
            color: series_color(i),
        }
    }
}

/// The points of a plot line without non-finite coordinates: egui_plot refuses bounds that
/// are not finite (a panic), and a NaN in the weights can reach a figure.
pub fn finite_points(points: Vec<[f64; 2]>) -> Vec<[f64; 2]> {
    points
        .into_iter()
        .filter(|p| p.iter().all(|v| v.is_finite()))
        .collect()
}

/// How an [`XyChart`] draws its series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marks {
    /// Lines through the points, each point marked.
    Lines,
    /// Bars grouped side by side at each x (one per series).
    Bars,
}

/// A chart of named series over x: axis titles, a legend above the data (never on it), hover
/// naming the series and the point, and a y range that does not magnify float noise.
pub struct XyChart {
    pub id: String,
    pub x_title: String,
    pub y_title: String,
    /// What a series is ("model", "pair"): the CSV's first column.
    pub series_title: String,
    pub series: Vec<Series>,
    pub marks: Marks,
    pub height: f32,
    /// The y axis spans at least this much (see [`y_range`]).
    pub min_y_span: f64,
    /// Values the y axis always shows (0 for bars and magnitudes).
    pub include_y: Vec<f64>,
    /// x is a layer index: integer ticks, "layer 3" on hover.
    pub x_is_layer: bool,
}

/// What the pointer is on in an [`XyChart`]: series `series`, point `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hovered {
    pub series: usize,
    pub index: usize,
}

/// How close (points) the pointer must come to a line's point to read it.
const HOVER_RADIUS: f32 = 12.0;

impl XyChart {
    pub fn new(
        id: impl Into<String>,
        x_title: impl Into<String>,
        y_title: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            x_title: x_title.into(),
            y_title: y_title.into(),
            series_title: "series".to_owned(),
            series: Vec::new(),
            marks: Marks::Lines,
            height: 180.0,
            min_y_span: 0.0,
            include_y: Vec::new(),
            x_is_layer: false,
        }
    }

    /// How x reads on hover and in ticks.
    pub fn x_text(&self, x: f64) -> String {
        if self.x_is_layer {
            format!("layer {}", x.round())
        } else {
            format!("{}: {}", self.x_title, fmt_sig(x, 4))
        }
    }

    /// The hover text of series `s`'s point `i`.
    pub fn hover_text(&self, s: usize, i: usize) -> Option<String> {
        let series = self.series.get(s)?;
        let [x, y] = *series.points.get(i)?;
        Some(format!(
            "{}\n{}\n{}: {}",
            series.name,
            self.x_text(x),
            self.y_title,
            fmt_sig(y, 4)
        ))
    }

    /// Every point as CSV: series, x, y (full precision).
    pub fn csv(&self) -> String {
        let header = [
            self.series_title.clone(),
            self.x_title.clone(),
            self.y_title.clone(),
        ];
        let rows = self.series.iter().flat_map(|s| {
            s.points
                .iter()
                .map(|[x, y]| vec![s.name.clone(), x.to_string(), y.to_string()])
        });
        csv_of(&header, rows)
    }

    /// The y range to show (with [`Self::include_y`] and the minimum span).
    fn y_bounds(&self) -> Option<(f64, f64)> {
        let ys = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p[1]))
            .chain(self.include_y.iter().copied());
        let (lo, hi) = ys.fold(None, |range: Option<(f64, f64)>, y| match range {
            None => Some((y, y)),
            Some((lo, hi)) => Some((lo.min(y), hi.max(y))),
        })?;
        Some(y_range(lo, hi, self.min_y_span))
    }

    fn bar_width(&self) -> f64 {
        0.8 / self.series.len().max(1) as f64
    }

    /// Where series `s`'s bar at `x` stands.
    fn bar_x(&self, s: usize, x: f64) -> f64 {
        x - 0.4 + self.bar_width() * (s as f64 + 0.5)
    }

    /// Draws the legend and the chart; returns what the pointer is on.
    pub fn show(&self, ui: &mut Ui) -> Option<Hovered> {
        legend_ui(ui, self.series.iter().map(|s| (s.name.as_str(), s.color)));
        let mut plot = egui_plot::Plot::new(&self.id)
            .height(self.height)
            .x_axis_label(self.x_title.clone())
            .y_axis_label(self.y_title.clone())
            .allow_scroll(false)
            .show_crosshair(false);
        if let Some((lo, hi)) = self.y_bounds() {
            plot = plot.include_y(lo).include_y(hi);
        }
        if self.x_is_layer {
            plot = plot.x_axis_formatter(|mark, _| {
                let k = mark.value.round();
                if (mark.value - k).abs() < 1e-9 {
                    format!("{k}")
                } else {
                    String::new()
                }
            });
        }
        let response = plot.show(ui, |plot| {
            for (s, series) in self.series.iter().enumerate() {
                match self.marks {
                    Marks::Lines => {
                        let points: egui_plot::PlotPoints<'_> = series.points.clone().into();
                        plot.line(
                            egui_plot::Line::new(series.name.clone(), points)
                                .color(series.color)
                                .width(1.5),
                        );
                        let points: egui_plot::PlotPoints<'_> = series.points.clone().into();
                        plot.points(
                            egui_plot::Points::new(series.name.clone(), points)
                                .color(series.color)
                                .radius(2.5),
                        );
                    }
                    Marks::Bars => {
                        let bars = series
                            .points
                            .iter()
                            .map(|&[x, y]| {
                                egui_plot::Bar::new(self.bar_x(s, x), y)
                                    .width(self.bar_width())
                                    .fill(series.color.gamma_multiply(0.8))
                                    .stroke(Stroke::new(1.0, series.color))
                            })
                            .collect();
                        plot.bar_chart(
                            egui_plot::BarChart::new(series.name.clone(), bars)
                                .color(series.color)
                                .allow_hover(false),
                        );
                    }
                }
            }
        });
        name_plot(&response.response, &self.id);
        let pointer = response.response.hover_pos()?;
        let hovered = self.hovered_at(&response.transform, pointer)?;
        if let Some(text) = self.hover_text(hovered.series, hovered.index) {
            hover_label(ui, &response.response, &text);
        }
        Some(hovered)
    }

    /// The point (or bar) under `pointer`, if any.
    pub fn hovered_at(
        &self,
        transform: &egui_plot::PlotTransform,
        pointer: Pos2,
    ) -> Option<Hovered> {
        let mut best: Option<(f32, Hovered)> = None;
        for (s, series) in self.series.iter().enumerate() {
            for (index, &[x, y]) in series.points.iter().enumerate() {
                let hovered = Hovered { series: s, index };
                let distance = match self.marks {
                    Marks::Lines => transform
                        .position_from_point(&egui_plot::PlotPoint::new(x, y))
                        .distance(pointer),
                    Marks::Bars => {
                        let half = self.bar_width() / 2.0;
                        let bar_x = self.bar_x(s, x);
                        let a = transform
                            .position_from_point(&egui_plot::PlotPoint::new(bar_x - half, 0.0));
                        let b = transform
                            .position_from_point(&egui_plot::PlotPoint::new(bar_x + half, y));
                        if Rect::from_two_pos(a, b).expand(1.0).contains(pointer) {
                            0.0
                        } else {
                            f32::INFINITY
                        }
                    }
                };
                if distance <= HOVER_RADIUS && best.is_none_or(|(d, _)| distance < d) {
                    best = Some((distance, hovered));
                }
            }
        }
        best.map(|(_, h)| h)
    }
}

/// Names a plot's area `chart <id>` for screen readers (and tests).
pub fn name_plot(response: &egui::Response, id: &str) {
    let label = format!("chart {id}");
    response.widget_info(|| egui::WidgetInfo::labeled(egui::accesskit::Role::Image, true, &label));
}

/// A legend beside the chart (above it, wrapping): a swatch and a name per entry, so it never
/// covers data.
pub fn legend_ui<'s>(ui: &mut Ui, entries: impl IntoIterator<Item = (&'s str, Color32)>) {
    ui.horizontal_wrapped(|ui| {
        for (name, color) in entries {
            let (swatch, _) = ui.allocate_exact_size(vec2(14.0, 10.0), Sense::hover());
            ui.painter()
                .rect_filled(swatch.shrink2(vec2(0.0, 1.0)), 2.0, color);
            ui.label(name);
            ui.add_space(6.0);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// CSV

/// A CSV line: fields with commas, quotes or line breaks quoted (RFC 4180).
fn csv_line(fields: &[String]) -> String {
    let quoted: Vec<String> = fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect();
    quoted.join(",")
}

/// A CSV document from a header and rows.
pub fn csv_of(header: &[String], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut out = csv_line(header);
    out.push('\n');
    for row in rows {
        out.push_str(&csv_line(&row));
        out.push('\n');
    }
    out
}

/// A number as a CSV field: full precision (it reads back to the same f64), empty for none.
pub fn csv_number(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

// ---------------------------------------------------------------------------------------------
// Saving

fn folder_id() -> Id {
    Id::unique("mergescope chart folder")
}

/// Where charts go unless the user types another folder.
pub fn default_folder() -> PathBuf {
    std::env::temp_dir().join("mergescope-charts")
}

/// The folder charts are saved to (kept with the window's state).
pub fn folder(ctx: &egui::Context) -> PathBuf {
    ctx.data_mut(|d| d.get_persisted::<String>(folder_id()))
        .filter(|s| !s.trim().is_empty())
        .map_or_else(default_folder, |s| PathBuf::from(s.trim()))
}

pub fn set_folder(ctx: &egui::Context, folder: &Path) {
    ctx.data_mut(|d| d.insert_persisted(folder_id(), folder.display().to_string()));
}

/// "Charts save to [folder]": the folder every chart's Save PNG / Save CSV writes into.
pub fn folder_ui(ui: &mut Ui) {
    let mut text = folder(ui.ctx()).display().to_string();
    ui.horizontal(|ui| {
        let label = ui.label("charts save to");
        let edit = ui
            .add(egui::TextEdit::singleline(&mut text).desired_width(260.0))
            .labelled_by(label.id)
            .on_hover_text("The folder Save PNG and Save CSV write into (created when needed)");
        if edit.changed() {
            ui.ctx()
                .data_mut(|d| d.insert_persisted(folder_id(), text.clone()));
        }
    });
}

/// Outcomes of PNG saves: the screenshot arrives after the frame that asked for it.
#[derive(Clone, Default)]
struct SavedPngs(Arc<Mutex<Vec<Notice>>>);

fn saved_pngs(ctx: &egui::Context) -> SavedPngs {
    ctx.data_mut(|d| {
        d.get_temp_mut_or_default::<SavedPngs>(Id::unique("mergescope saved pngs"))
            .clone()
    })
}

/// A file name from a chart's name: letters, digits, `-`, `_` and `.` kept, the rest `-`.
pub fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn write_file(path: &Path, bytes: &[u8]) -> Notice {
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, bytes));
    match written {
        Ok(()) => Notice {
            error: false,
            text: format!("saved {}", path.display()),
        },
        Err(e) => Notice {
            error: true,
            text: format!(
                "cannot write {}: {e}; type another folder after \"charts save to\"",
                path.display()
            ),
        },
    }
}

/// The part of `screenshot` (physical pixels) under `rect` (points), as a PNG file's bytes.
pub fn png_of_region(
    screenshot: &egui::ColorImage,
    rect: Rect,
    pixels_per_point: f32,
) -> Result<Vec<u8>, String> {
    let [width, height] = screenshot.size;
    let px = |v: f32, max: usize| ((v * pixels_per_point).round().max(0.0) as usize).min(max);
    let (x0, x1) = (px(rect.left(), width), px(rect.right(), width));
    let (y0, y1) = (px(rect.top(), height), px(rect.bottom(), height));
    if x1 <= x0 || y1 <= y0 {
        return Err("the chart is not on screen".to_owned());
    }
    let mut image = image::RgbaImage::new((x1 - x0) as u32, (y1 - y0) as u32);
    for (y, row) in (y0..y1).enumerate() {
        for (x, column) in (x0..x1).enumerate() {
            let [r, g, b, _] = screenshot.pixels[row * width + column].to_srgba_unmultiplied();
            image.put_pixel(x as u32, y as u32, image::Rgba([r, g, b, 255]));
        }
    }
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// A chart with its title and Save PNG / Save CSV buttons above it. `name` names the files
/// (`<folder>/<name>.png`, `.csv`); `csv` makes the CSV when asked. Saving outcomes go to
/// `notice`.
pub fn framed_ui<R>(
    ui: &mut Ui,
    notice: &mut Option<Notice>,
    name: &str,
    title: &str,
    csv: impl FnOnce() -> String,
    body: impl FnOnce(&mut Ui) -> R,
) -> R {
    if let Some(saved) = saved_pngs(ui.ctx()).0.lock().ok().and_then(|mut s| s.pop()) {
        *notice = Some(saved);
    }
    let stem = file_stem(name);
    let folder = folder(ui.ctx());
    // The buttons go under a title too long for the width (a chart in half the window).
    let (png, save_csv) = ui
        .horizontal_wrapped(|ui| {
            ui.strong(title);
            let png = ui.small_button("Save PNG").on_hover_text(format!(
                "Save this chart as {}",
                folder.join(format!("{stem}.png")).display()
            ));
            let csv = ui.small_button("Save CSV").on_hover_text(format!(
                "Save this chart's numbers as {}",
                folder.join(format!("{stem}.csv")).display()
            ));
            (png.clicked(), csv.clicked())
        })
        .inner;
    let shown = ui.scope(body);
    let rect = shown.response.rect;
    if save_csv {
        *notice = Some(write_file(
            &folder.join(format!("{stem}.csv")),
            csv().as_bytes(),
        ));
    }
    // A PNG asked for is taken the next frame, once the chart has been scrolled into view.
    let pending_id = Id::unique(("mergescope pending png", &stem));
    if png {
        // Scrolled into view first: the screenshot holds only what is on screen.
        ui.scroll_to_rect(rect, None);
        ui.ctx().data_mut(|d| d.insert_temp(pending_id, true));
        ui.ctx().request_repaint();
    } else if ui.ctx().data_mut(|d| d.remove_temp::<bool>(pending_id)) == Some(true) {
        let visible = rect.intersect(ui.clip_rect());
        let pixels_per_point = ui.ctx().pixels_per_point();
        let path = folder.join(format!("{stem}.png"));
        let saved = saved_pngs(ui.ctx());
        let ctx = ui.ctx().clone();
        ui.ctx().request_screenshot(move |screenshot| {
            let outcome = match png_of_region(&screenshot, visible, pixels_per_point) {
                Ok(bytes) => write_file(&path, &bytes),
                Err(e) => Notice {
                    error: true,
                    text: format!("cannot save {}: {e}", path.display()),
                },
            };
            if let Ok(mut saved) = saved.0.lock() {
                saved.push(outcome);
            }
            ctx.request_repaint();
        });
    }
    shown.inner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_lightness_rises_monotonically() {
        let l: Vec<f64> = (0..=200)
            .map(|k| lightness(viridis(f64::from(k) / 200.0)))
            .collect();
        for pair in l.windows(2) {
            assert!(pair[1] >= pair[0] - 1e-3, "{pair:?}");
        }
        assert!(l[200] - l[0] > 0.5, "dark to light: {} → {}", l[0], l[200]);
    }

    #[test]
    fn diverging_is_symmetric_around_its_centre() {
        for k in 0..=50 {
            let d = f64::from(k) / 100.0;
            let (below, above) = (diverging(0.5 - d), diverging(0.5 + d));
            assert!(
                (lightness(below) - lightness(above)).abs() < 0.01,
                "at ±{d}: {below:?} {above:?}"
            );
            // Blue below, red above.
            if d > 0.05 {
                assert!(below.b() > below.r() && above.r() > above.b(), "at ±{d}");
            }
        }
        // Lightness falls from the centre outwards on both sides.
        let l: Vec<f64> = (0..=50)
            .map(|k| lightness(diverging(0.5 + f64::from(k) / 100.0)))
            .collect();
        assert!(l.windows(2).all(|p| p[1] <= p[0] + 1e-3), "{l:?}");
        let centre = diverging(0.5);
        assert!(
            centre.r().abs_diff(centre.b()) <= 2 && centre.r() > 220,
            "{centre:?}"
        );
    }

    #[test]
    fn the_scale_leaves_the_diagonal_out_when_asked() {
        let m = vec![
            vec![Some(1.0), Some(0.2), Some(-0.1)],
            vec![Some(0.2), Some(1.0), None],
            vec![Some(-0.1), Some(f64::NAN), Some(1.0)],
        ];
        assert_eq!(
            scale_range(&m, true, ColorScale::Sequential),
            Some((-0.1, 0.2))
        );
        assert_eq!(
            scale_range(&m, false, ColorScale::Sequential),
            Some((-0.1, 1.0))
        );
        assert_eq!(
            scale_range(&m, true, ColorScale::Diverging),
            Some((-0.2, 0.2))
        );
        assert_eq!(
            scale_range(&[vec![None]], true, ColorScale::Sequential),
            None
        );
        // 0 is the centre of a diverging scale.
        assert_eq!(
            color_of(0.0, (-0.2, 0.2), ColorScale::Diverging),
            diverging(0.5)
        );
    }

    #[test]
    fn float_noise_is_not_magnified() {
        let (lo, hi) = y_range(0.3 - 1e-7, 0.3 + 1e-7, 0.0);
        assert!(hi - lo >= 0.006 - 1e-12, "{lo} {hi}");
        assert!(lo < 0.3 && hi > 0.3);
        // A flat series at 0 still gets the minimum span.
        assert_eq!(y_range(0.0, 0.0, 0.1), (-0.05, 0.05));
        // Real variation is kept as it is.
        assert_eq!(y_range(0.1, 0.5, 0.01), (0.1, 0.5));
        // And a flat heatmap is one colour.
        assert_eq!(
            color_of(0.3 + 1e-12, (0.3, 0.3 + 2e-12), ColorScale::Sequential),
            viridis(0.5)
        );
    }

    #[test]
    fn numbers_and_csv_read_exactly() {
        assert_eq!(fmt_sig(0.256_49, 3), "0.256");
        assert_eq!(fmt_sig(-0.052_31, 3), "-0.0523");
        assert_eq!(fmt_sig(12.345, 3), "12.3");
        assert_eq!(fmt_sig(3.2e-7, 3), "3.20e-7");
        assert_eq!(
            csv_of(
                &["a,b".to_owned(), "c".to_owned()],
                [vec!["x\"y".to_owned(), csv_number(Some(0.1))]]
            ),
            "\"a,b\",c\n\"x\"\"y\",0.1\n"
        );
        assert_eq!(file_stem("cosine / layer 2"), "cosine---layer-2");
    }

    #[test]
    fn a_region_of_a_screenshot_becomes_a_png() {
        let mut shot = egui::ColorImage::filled([20, 10], Color32::BLACK);
        shot.pixels[2 * 20 + 4] = Color32::RED;
        let bytes = png_of_region(
            &shot,
            Rect::from_min_size(pos2(2.0, 1.0), vec2(5.0, 3.0)),
            2.0,
        )
        .unwrap();
        let image = image::load_from_memory(&bytes).unwrap().to_rgba8();
        assert_eq!(image.dimensions(), (10, 6));
        assert_eq!(image.get_pixel(0, 0).0, [255, 0, 0, 255]);
        assert_eq!(image.get_pixel(1, 0).0, [0, 0, 0, 255]);
        assert!(
            png_of_region(
                &shot,
                Rect::from_min_size(pos2(30.0, 1.0), vec2(5.0, 3.0)),
                1.0
            )
            .is_err()
        );
    }
}
