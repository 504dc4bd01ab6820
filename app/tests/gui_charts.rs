//! Charts that can be read exactly and explanations in place (issue 17, parts 4 and 5), driven
//! through egui_kittest on the demo family: hover names the model and the layer, Save CSV
//! writes the figures the report holds, Save PNG a picture of the chart, the interference
//! scale leaves the diagonal out; every method and parameter has its tooltip; curve shapes for
//! every model, the attention/MLP split, and marked negative or out-of-range weights.

use std::path::Path;

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT as _, Queryable as _};
use mergescope::gui::Workbench;
use mergescope::gui::chart::fmt_sig;
use mergescope::gui::help;
use mergescope::gui::methods::{has_lambda, has_weight, methods, spec};
use mergescope::gui::state::{CurvePreset, curve_mean, model_param_range, model_params};

mod common;
use common::{click_through, harness, opened, wait_for};

/// The demo family open with its analysis, tooltips shown at once, charts saved into `dir`.
fn workbench(dir: &Path) -> Harness<'static, Workbench> {
    let mut harness = harness();
    opened(&mut harness);
    harness
        .ctx
        .all_styles_mut(|s| s.interaction.tooltip_delay = 0.0);
    mergescope::gui::chart::set_folder(&harness.ctx, dir);
    harness
}

/// The text of the shown node whose label (or a text label's value) contains `needle`.
fn label_containing(harness: &Harness<'_, Workbench>, needle: &str) -> Option<String> {
    harness.query_by_label_contains(needle).and_then(|n| {
        let node = n.accesskit_node();
        node.label().or_else(|| node.value())
    })
}

/// Lets a hover take effect: the tooltip of a widget under a pointer that just arrived shows
/// a frame later, and nothing asks for that frame.
fn settle(harness: &mut Harness<'_, Workbench>) {
    harness.run_ok();
    harness.step();
}

/// What the Sensitivity heatmap shows for `model`: the largest |τ|/|θ_base| of the tensors of
/// each (layer, module).
fn sensitivity_cell(app: &Workbench, model: usize, layer: usize, module: &str) -> f64 {
    app.report
        .as_ref()
        .unwrap()
        .tensors
        .iter()
        .filter(|t| t.block == Some(layer) && t.module == module)
        .filter_map(|t| t.metrics.models[model].rel)
        .fold(f64::NEG_INFINITY, f64::max)
}

fn layer_figure(app: &Workbench, model: usize, layer: usize) -> f64 {
    let report = app.report.as_ref().unwrap();
    let group = report
        .layers
        .iter()
        .find(|g| g.name == format!("layer {layer}"))
        .unwrap();
    group.metrics.models[model].rel.unwrap()
}

const HEATMAP: &str = "|τ| / |θ_base|, upright";

#[test]
fn hovering_a_heatmap_cell_names_the_model_layer_and_module() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = workbench(dir.path());
    click_through(&mut harness, &["Sensitivity"]);
    harness
        .get_by_label(&format!("{HEATMAP}: layer 2, attn q"))
        .hover();
    settle(&mut harness);
    let text = label_containing(&harness, "layer 2 × attn q").expect("the cell's hover text");
    let expected = sensitivity_cell(harness.state(), 0, 2, "attn q");
    assert!(text.contains("shown: upright"), "{text}");
    assert!(
        text.contains(&format!("{HEATMAP}: {}", fmt_sig(expected, 4))),
        "{text}"
    );
    assert!(
        text.contains("vit.encoder.layer.2.attention.attention.query"),
        "{text}"
    );
    // A click on a layer's label selects it.
    harness.get_by_label("layer 3").click();
    harness.run_ok();
    assert_eq!(harness.state().selected_layer, Some(3));
}

#[test]
fn hovering_a_bar_names_the_model_and_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = workbench(dir.path());
    click_through(&mut harness, &["Sensitivity"]);
    let plot = harness.get_by_label("chart sensitivity-per-layer").rect();
    // Sweep the pointer along the bars' feet until the second model's bar of layer 1 answers.
    let y = plot.bottom() - 0.2 * plot.height();
    let mut found = None;
    let mut x = plot.left() + 2.0;
    while x < plot.right() && found.is_none() {
        harness.hover_at(egui::pos2(x, y));
        harness.step();
        found = label_containing(&harness, "rotated\nlayer 1\n");
        x += 4.0;
    }
    let text = found.expect("a bar of rotated at layer 1");
    let expected = layer_figure(harness.state(), 1, 1);
    assert_eq!(
        text,
        format!("rotated\nlayer 1\n|τ| / |θ_base|: {}", fmt_sig(expected, 4))
    );
}

#[test]
fn save_csv_writes_the_charts_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = workbench(dir.path());
    click_through(&mut harness, &["Sensitivity"]);
    harness.get_all_by_label("Save CSV").next().unwrap().click();
    harness.run_ok();
    let file = dir.path().join("sensitivity-upright.csv");
    assert_eq!(
        harness.state().notice.as_ref().map(|n| n.text.clone()),
        Some(format!("saved {}", file.display()))
    );
    let csv = std::fs::read_to_string(&file).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header[0], "layer \\ module");
    let mut cells = 0;
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let layer: usize = fields[0].strip_prefix("layer ").unwrap().parse().unwrap();
        for (module, value) in header[1..].iter().zip(&fields[1..]) {
            let value: f64 = value.parse().unwrap();
            assert_eq!(
                value,
                sensitivity_cell(harness.state(), 0, layer, module),
                "layer {layer}, {module}"
            );
            cells += 1;
        }
    }
    assert_eq!(cells, 4 * 7, "4 layers × 7 modules");

    // The bars: one row per model and layer.
    harness.get_all_by_label("Save CSV").nth(1).unwrap().click();
    harness.run_ok();
    let csv = std::fs::read_to_string(dir.path().join("sensitivity-per-layer.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("model,layer,|τ| / |θ_base|"));
    let models = ["upright", "rotated", "mirrored", "inverted"];
    let mut rows = 0;
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let model = models.iter().position(|m| *m == fields[0]).unwrap();
        let layer: usize = fields[1].parse().unwrap();
        let value: f64 = fields[2].parse().unwrap();
        assert_eq!(value, layer_figure(harness.state(), model, layer), "{line}");
        rows += 1;
    }
    assert_eq!(rows, 16);
}

#[test]
fn save_png_writes_a_picture_of_the_chart() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = workbench(dir.path());
    click_through(&mut harness, &["Sensitivity"]);
    let cell = harness
        .get_by_label(&format!("{HEATMAP}: layer 0, attn k"))
        .rect();
    let bar = harness
        .get_by_label_contains(&format!("{HEATMAP} colour scale"))
        .rect();
    harness.get_all_by_label("Save PNG").next().unwrap().click();
    let file = dir.path().join("sensitivity-upright.png");
    wait_for(&mut harness, "the PNG", |app| {
        app.notice
            .as_ref()
            .is_some_and(|n| n.text.contains("sensitivity-upright.png"))
    });
    let notice = harness.state().notice.clone().unwrap();
    assert_eq!(notice.text, format!("saved {}", file.display()));
    let image = image::open(&file).unwrap().to_rgb8();
    // From the row labels to the colour bar's ticks, the layer rows and the column labels.
    let (width, height) = image.dimensions();
    let ppp = harness.ctx.pixels_per_point();
    let span = (bar.right() - cell.left()) * ppp;
    assert!(
        width as f32 > span
            && width < 1200
            && (4.0 * cell.height() * ppp..300.0).contains(&(height as f32)),
        "{width} × {height}"
    );
    // The largest value's colour (viridis' yellow) is in it.
    let yellow = mergescope::gui::chart::viridis(1.0);
    assert!(
        image
            .pixels()
            .any(|p| p.0 == [yellow.r(), yellow.g(), yellow.b()]),
        "no cell at the top of the scale"
    );
}

/// Off-diagonal (min, max) of a matrix.
fn off_diagonal(m: &[Vec<Option<f64>>]) -> (f64, f64) {
    let values = m.iter().enumerate().flat_map(|(i, row)| {
        row.iter()
            .enumerate()
            .filter(move |(j, _)| *j != i)
            .filter_map(|(_, v)| *v)
    });
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

#[test]
fn the_interference_scale_leaves_the_diagonal_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = workbench(dir.path());
    click_through(&mut harness, &["Interference"]);
    let metrics = harness
        .state()
        .report
        .as_ref()
        .unwrap()
        .whole_model
        .metrics
        .clone();
    for (title, matrix) in [
        ("sign conflict", &metrics.sign_conflict),
        ("top-k overlap", &metrics.jaccard),
    ] {
        let (lo, hi) = off_diagonal(matrix);
        let label = format!(
            "{title} colour scale: {} to {}",
            fmt_sig(lo, 4),
            fmt_sig(hi, 4)
        );
        harness.get_by_label(&label);
    }
    // Top-k overlap of a model with itself is 1, above every pair.
    assert!(off_diagonal(&metrics.jaccard).1 < 0.5);
    // Cosine is signed: centred at 0, ± the largest off-diagonal magnitude.
    let (lo, hi) = off_diagonal(&metrics.cosine);
    let m = lo.abs().max(hi.abs());
    harness.get_by_label(&format!(
        "cosine colour scale: {} to {}",
        fmt_sig(-m, 4),
        fmt_sig(m, 4)
    ));
    // A cell's hover names both models and the scope.
    harness.get_by_label("cosine: rotated, mirrored").hover();
    harness.run_ok();
    let text = label_containing(&harness, "rotated × mirrored\ncosine").unwrap();
    let cosine = metrics.cosine[1][2].unwrap();
    assert!(
        text.contains(&format!("cosine: {}", fmt_sig(cosine, 4)))
            && text.contains("scope: whole model"),
        "{text}"
    );
}

/// Hovers the node labelled `label` (of `role`, if given) and returns the tooltip holding
/// `needle`.
fn tooltip(
    harness: &mut Harness<'_, Workbench>,
    role: Option<Role>,
    label: &str,
    needle: &str,
) -> String {
    match role {
        Some(role) => harness.get_by_role_and_label(role, label).hover(),
        None => {
            // The method list scrolls: show the entry first, as a user scrolls to it.
            harness.get_by_label(label).scroll_to_me();
            harness.run_ok();
            harness.get_by_label(label).hover();
        }
    }
    settle(harness);
    label_containing(harness, needle).unwrap_or_else(|| panic!("no tooltip {needle:?} on {label}"))
}

/// The first line of a tooltip: what finds it among the widgets.
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap()
}

#[test]
fn every_method_and_parameter_has_a_tooltip() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = workbench(dir.path());
    click_through(&mut harness, &["Merge"]);
    // Methods with a weight for every open model (the others: gui_methods.rs).
    let weighted = methods()
        .into_iter()
        .filter(|m| has_weight(m) && spec(m).is_some_and(|s| s.max_models.is_none()));
    for method in weighted {
        harness.get_by_label("method").click();
        harness.run_ok();
        // Each entry of the list explains its method.
        let entry = tooltip(&mut harness, None, method, "When to use");
        assert_eq!(entry, help::method(method));
        harness.get_by_label(method).click();
        harness.run_ok();
        assert_eq!(harness.state().settings.as_ref().unwrap().method, method);
        let combo = tooltip(&mut harness, None, "method", "When to use");
        assert_eq!(combo, help::method(method));

        let weight = tooltip(
            &mut harness,
            Some(Role::Slider),
            "mirrored weight",
            "weight: ",
        );
        assert!(
            weight.contains("Range: -1 to 2") && weight.contains("When to use"),
            "{weight}"
        );
        for param in model_params(method) {
            let (start, range) = model_param_range(param);
            let text = tooltip(
                &mut harness,
                Some(Role::Slider),
                &format!("upright {param}"),
                &format!("{param}: "),
            );
            assert_eq!(text, help::param(method, param, Some(range), Some(start)));
        }
        for (flag, _) in mergescope::gui::state::method_flags(method) {
            let text = tooltip(&mut harness, None, flag, &format!("{flag}: "));
            assert_eq!(text, help::param(method, flag, None, None));
        }
        if has_lambda(method) {
            let text = tooltip(&mut harness, Some(Role::Slider), "lambda", "lambda: ");
            assert_eq!(text, help::param(method, "lambda", Some(0.0..=2.0), None));
            let filters = help::param(method, "module filters", Some(0.0..=2.0), None);
            tooltip(
                &mut harness,
                None,
                "add a module filter",
                first_line(&filters),
            );
        }
        let per_layer = help::param(method, "per-layer weights", None, None);
        tooltip(
            &mut harness,
            None,
            "per-layer weights",
            first_line(&per_layer),
        );
    }
}

#[test]
fn a_shape_applied_to_every_model_reshapes_every_curve() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = workbench(dir.path());
    click_through(&mut harness, &["Merge", "per-layer weights"]);
    harness.state_mut().settings.as_mut().unwrap().curves[2] = vec![0.1, 0.5];
    harness.run_ok();
    click_through(
        &mut harness,
        &["shape of every curve", "V (first and last layers most)"],
    );
    let curves = harness.state().settings.as_ref().unwrap().curves.clone();
    assert_eq!(curves[0], vec![0.6, 0.3, 0.0, 0.3, 0.6]);
    assert_eq!(curves[1], curves[0]);
    assert_eq!(curves[3], curves[0]);
    // Each curve keeps its own mean weight (0.1 → 0.5 over four layers has mean 0.3 too).
    assert_eq!(curves[2], CurvePreset::V.points(0.3));
    click_through(
        &mut harness,
        &["shape of every curve", "rising (late layers most)"],
    );
    let rising = harness.state().settings.as_ref().unwrap().curves.clone();
    for (before, after) in curves.iter().zip(&rising) {
        assert_eq!(*after, CurvePreset::Rising.points(curve_mean(before, 4)));
    }
    // (V over four layers has a mean of 0.4: the presets keep the mean over many layers.)
    assert_eq!(rising[0], vec![0.0, 0.2, 0.4, 0.6, 0.8]);
}

#[test]
fn the_attention_mlp_split_writes_module_filters() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = workbench(dir.path());
    click_through(&mut harness, &["Merge", "per-layer weights"]);
    let text = tooltip(
        &mut harness,
        None,
        "Set module filters",
        "Sets lambda by module",
    );
    // ViT names: attention tensors under `attention`, the MLP's under `intermediate` and
    // `output` (the attention's own `output` is caught first by `attention`).
    assert!(
        text.contains("\"attention\" (32 attention tensors)")
            && text.contains("\"intermediate\" or \"output\" (16 MLP tensors)"),
        "{text}"
    );
    harness.get_by_label("Set module filters").click();
    harness.run_ok();
    let filters: Vec<(String, f64)> = harness
        .state()
        .settings
        .as_ref()
        .unwrap()
        .filters
        .iter()
        .map(|f| (f.filter.clone(), f.lambda))
        .collect();
    assert_eq!(
        filters,
        [
            ("attention".to_owned(), 1.0),
            ("intermediate".to_owned(), 0.5),
            ("output".to_owned(), 0.5)
        ]
    );
}

#[test]
fn negative_and_out_of_range_points_are_marked() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = workbench(dir.path());
    click_through(&mut harness, &["Merge", "per-layer weights"]);
    {
        let curves = &mut harness.state_mut().settings.as_mut().unwrap().curves;
        curves[0] = vec![-0.5, 0.3];
        curves[1] = vec![3.0, 0.3];
    }
    harness.run_ok();
    let text = tooltip(
        &mut harness,
        Some(Role::Slider),
        "upright point 1",
        "point 1 of 2",
    );
    assert!(
        text.contains("weight -0.50") && text.contains("negative"),
        "{text}"
    );
    let text = tooltip(
        &mut harness,
        Some(Role::Slider),
        "rotated point 1",
        "point 1 of 2",
    );
    assert!(
        text.contains("outside this editor's range (-1 to 2)"),
        "{text}"
    );
    let text = tooltip(
        &mut harness,
        Some(Role::Slider),
        "upright point 2",
        "point 2 of 2",
    );
    assert!(
        !text.contains("negative") && !text.contains("outside"),
        "{text}"
    );

    // Drawn in the error colour; a point in range in the accent colour.
    harness.remove_cursor();
    harness.run_ok();
    let centre = |label: &str| {
        harness
            .get_by_role_and_label(Role::Slider, label)
            .rect()
            .center()
    };
    let points = [
        centre("upright point 1"),
        centre("rotated point 1"),
        centre("upright point 2"),
    ];
    let visuals = harness.ctx.global_style().visuals.clone();
    let image = harness.render().expect("kittest renders with wgpu");
    let ppp = harness.ctx.pixels_per_point();
    let pixel = |p: egui::Pos2| {
        let px = image.get_pixel((p.x * ppp) as u32, (p.y * ppp) as u32).0;
        egui::Color32::from_rgb(px[0], px[1], px[2])
    };
    let error = visuals.error_fg_color;
    assert_eq!(pixel(points[0]), error, "negative");
    assert_eq!(pixel(points[1]), error, "out of range");
    assert_eq!(pixel(points[2]), visuals.selection.bg_fill, "in range");
}

#[test]
fn pareto_charts_name_their_points_and_save_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = workbench(dir.path());
    click_through(&mut harness, &["Pareto", "quick estimate"]);
    harness.state_mut().pareto.budget = 12;
    click_through(&mut harness, &["Search the front"]);
    wait_for(&mut harness, "the search and its map", |app| {
        app.pareto.map.is_some()
    });
    // Sweep the scatter until the pointer is on a point: its hover names it and its scores.
    harness.get_by_label("chart pareto-scatter").scroll_to_me();
    harness.run_ok();
    let plot = harness.get_by_label("chart pareto-scatter").rect();
    let needle = {
        let state = &harness.state().pareto;
        format!("\n{}: ", state.objectives[state.axes.0].name)
    };
    let mut found = None;
    'sweep: for y in (0..)
        .map(|k| plot.top() + 4.0 + 10.0 * k as f32)
        .take_while(|y| *y < plot.bottom())
    {
        for x in (0..)
            .map(|k| plot.left() + 4.0 + 10.0 * k as f32)
            .take_while(|x| *x < plot.right())
        {
            harness.hover_at(egui::pos2(x, y));
            harness.step();
            harness.step();
            if let Some(text) = label_containing(&harness, &needle) {
                found = Some(text);
                break 'sweep;
            }
        }
    }
    let text = found.expect("a point in the scatter");
    let state = &harness.state().pareto;
    let i: usize = text[1..text.find(':').unwrap()].parse().unwrap();
    let point = &state.points[i];
    let (a, b) = state.axes;
    let expected = format!(
        "#{i}: {}\n{}: {}\n{}: {}",
        point.source.describe(),
        state.objectives[a].name,
        state.objectives[a].display(point.scores[a]),
        state.objectives[b].name,
        state.objectives[b].display(point.scores[b])
    );
    assert_eq!(text, expected);

    harness.remove_cursor();
    harness.run_ok();
    harness.get_by_label("chart pareto-scatter");
    let scatter_csv = harness
        .get_all_by_label("Save CSV")
        .nth(1)
        .expect("the hypervolume's, the scatter's and the parallel coordinates'");
    scatter_csv.click();
    harness.run_ok();
    let csv = std::fs::read_to_string(dir.path().join("pareto-scatter.csv")).unwrap();
    let state = &harness.state().pareto;
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), state.points.len());
    for (row, point) in rows.iter().zip(&state.points) {
        let fields: Vec<&str> = row.split(',').collect();
        let m = state.objectives.len();
        let scores: Vec<f64> = fields[3..3 + m]
            .iter()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(scores, point.scores, "{row}");
    }
}
