//! The parity checker of `shared/parity/compare.py`, in Rust, so CI needs no Python.
//!
//! Same criteria per tensor: names, shapes and dtypes must match; `exact` requires every element
//! within `atol * max|e| + rtol * |e_i|` and a relative L2 error within `l2`; `selection`
//! allows up to 0.1% flipped elements at a looser L2; `bf16` uses atol = rtol = 2^-6; `stats`
//! compares task vectors statistically (for DARE and DELLA, whose masks come from torch's RNG).

use std::path::Path;

use crate::fixture::read_folder;

/// Tolerances of one comparison class (compare.py's DEFAULTS).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
    pub l2: f64,
    pub bad_frac: f64,
}

impl Tolerance {
    pub const EXACT: Self = Self {
        rtol: 1e-5,
        atol: 1e-5,
        l2: 1e-5,
        bad_frac: 0.0,
    };
    pub const EXACT_SELECTION: Self = Self {
        rtol: 1e-5,
        atol: 1e-5,
        l2: 2e-3,
        bad_frac: 1e-3,
    };
    pub const BF16: Self = Self {
        rtol: 1.0 / 64.0,
        atol: 1.0 / 64.0,
        l2: 4e-3,
        bad_frac: 1e-3,
    };
}

/// compare.py's `stats` constants (its defaults, overridden by MANIFEST's calibration).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatsTolerance {
    pub z_tol: f64,
    pub m_tol: f64,
    pub v_tol: f64,
    pub corr_min: f64,
    pub c_tol: f64,
}

/// How a recipe's output is compared.
#[derive(Clone, Debug, PartialEq)]
pub enum Class {
    Close(Tolerance),
    /// Task vectors against `base` (a folder relative to the parity set).
    Stats {
        tol: StatsTolerance,
        base: String,
    },
}

impl Class {
    /// The class MANIFEST.json assigns to `expected/<recipe>`.
    pub fn for_recipe(manifest: &Path, recipe: &str) -> Self {
        let text = std::fs::read_to_string(manifest).expect("MANIFEST.json is readable");
        let json: serde_json::Value = serde_json::from_str(&text).expect("MANIFEST.json is JSON");
        let compare = &json["methods"][recipe]["compare"];
        let selection = compare["selection"].as_bool().unwrap_or(false);
        match compare["mode"].as_str() {
            Some("exact") if selection => Self::Close(Tolerance::EXACT_SELECTION),
            Some("exact") => Self::Close(Tolerance::EXACT),
            Some("bf16") => Self::Close(Tolerance::BF16),
            Some("stats") => {
                let cal = &compare["calibration"];
                let get = |key: &str, default: f64| cal[key].as_f64().unwrap_or(default);
                Self::Stats {
                    tol: StatsTolerance {
                        z_tol: get("z_tol", 6.0),
                        m_tol: get("m_tol", 8.0),
                        v_tol: get("v_tol", 8.0),
                        corr_min: get("corr_min", 0.3),
                        c_tol: get("c_tol", 3.0),
                    },
                    base: compare["base"]
                        .as_str()
                        .expect("stats mode names its base")
                        .to_owned(),
                }
            }
            other => panic!("{recipe}: unknown comparison mode {other:?}"),
        }
    }
}

/// compare.py's `compare_stats` for one tensor: `p`, `e` outputs, `b` the base.
pub fn compare_stats(
    name: &str,
    p: &[f64],
    e: &[f64],
    b: &[f64],
    tol: StatsTolerance,
) -> TensorReport {
    let n = e.len() as f64;
    let base_scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    let tp: Vec<f64> = p.iter().zip(b).map(|(x, y)| x - y).collect();
    let te: Vec<f64> = e.iter().zip(b).map(|(x, y)| x - y).collect();
    let stats = |t: &[f64]| {
        let zero = t.iter().filter(|v| v.abs() <= 1e-7 * base_scale).count() as f64 / n;
        let mean = t.iter().sum::<f64>() / n;
        let var = t.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        (zero, mean, var)
    };
    let (zp, mp, vp) = stats(&tp);
    let (ze, me, ve) = stats(&te);
    let rn = 1.0 / n.sqrt();
    let var_ratio = if ve > 0.0 {
        vp / ve
    } else if vp == 0.0 {
        1.0
    } else {
        f64::INFINITY
    };
    let denom = (vp * ve).sqrt();
    let corr = if denom > 0.0 {
        tp.iter()
            .zip(&te)
            .map(|(x, y)| (x - mp) * (y - me))
            .sum::<f64>()
            / n
            / denom
    } else if vp == ve {
        1.0
    } else {
        0.0
    };
    let ok = (zp - ze).abs() <= tol.z_tol * rn + 0.002
        && (mp - me).abs() <= tol.m_tol * (ve / n).sqrt() + 1e-12
        && (var_ratio - 1.0).abs() <= tol.v_tol * rn + 0.02
        && corr >= tol.corr_min - tol.c_tol * rn
        && p.iter().all(|v| v.is_finite());
    let diff_norm = l2_distance(p, e);
    let e_norm = e.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-30);
    TensorReport {
        name: name.to_owned(),
        max_abs: p
            .iter()
            .zip(e)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max),
        rel_l2: diff_norm / e_norm,
        bad: usize::from(!ok),
        ok,
    }
}

/// Figures for one tensor.
#[derive(Clone, Debug)]
pub struct TensorReport {
    pub name: String,
    pub max_abs: f64,
    pub rel_l2: f64,
    pub bad: usize,
    pub ok: bool,
}

/// Compares two folders; `Err` lists every problem (like compare.py's FAIL output). `base` is
/// the base model's folder, needed by the `stats` class.
pub fn compare_folders(
    produced: &Path,
    expected: &Path,
    class: &Class,
    base: Option<&Path>,
) -> Result<Vec<TensorReport>, String> {
    let p = read_folder(produced);
    let e = read_folder(expected);
    let b = base.map(read_folder);
    let mut problems = Vec::new();
    for name in p.keys().filter(|n| !e.contains_key(*n)) {
        problems.push(format!("unexpected tensor {name}"));
    }
    for name in e.keys().filter(|n| !p.contains_key(*n)) {
        problems.push(format!("missing tensor {name}"));
    }
    let mut reports = Vec::new();
    for (name, (e_dtype, e_shape, e_values)) in &e {
        let Some((p_dtype, p_shape, p_values)) = p.get(name) else {
            continue;
        };
        if p_shape != e_shape {
            problems.push(format!("{name}: shape {p_shape:?} != expected {e_shape:?}"));
            continue;
        }
        if p_dtype != e_dtype {
            problems.push(format!("{name}: dtype {p_dtype:?} != expected {e_dtype:?}"));
        }
        let report = match class {
            Class::Close(tol) => compare_tensor(name, p_values, e_values, *tol),
            Class::Stats { tol, .. } => {
                let base = b.as_ref().expect("stats comparisons need the base folder");
                compare_stats(name, p_values, e_values, &base[name].2, *tol)
            }
        };
        if !report.ok {
            problems.push(format!(
                "{name}: out of tolerance (max-abs {:.3e}, rel-L2 {:.3e}, bad {})",
                report.max_abs, report.rel_l2, report.bad
            ));
        }
        reports.push(report);
    }
    if problems.is_empty() {
        Ok(reports)
    } else {
        Err(problems.join("\n"))
    }
}

/// `||p - e||` in f64.
fn l2_distance(p: &[f64], e: &[f64]) -> f64 {
    p.iter()
        .zip(e)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt()
}

pub fn compare_tensor(name: &str, p: &[f64], e: &[f64], tol: Tolerance) -> TensorReport {
    let scale = e.iter().fold(0f64, |m, v| m.max(v.abs()));
    let e_norm = e.iter().map(|v| v * v).sum::<f64>().sqrt();
    let diff_norm = l2_distance(p, e);
    let mut bad = 0;
    let mut max_abs = 0f64;
    let mut finite = true;
    for (a, b) in p.iter().zip(e) {
        let d = (a - b).abs();
        max_abs = max_abs.max(d);
        finite &= a.is_finite();
        if d > tol.atol * scale + tol.rtol * b.abs() {
            bad += 1;
        }
    }
    let rel_l2 = if e_norm > 0.0 {
        diff_norm / e_norm
    } else {
        diff_norm
    };
    let allowed = (tol.bad_frac * e.len() as f64).floor() as usize;
    TensorReport {
        name: name.to_owned(),
        max_abs,
        rel_l2,
        bad,
        ok: finite && bad <= allowed && rel_l2 <= tol.l2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_rejects_what_it_should() {
        let e = vec![1.0, -2.0, 3.0, 0.5];
        assert!(compare_tensor("t", &e, &e, Tolerance::EXACT).ok);
        let mut p = e.clone();
        p[2] += 1e-3;
        assert!(!compare_tensor("t", &p, &e, Tolerance::EXACT).ok);
        p[2] = f64::NAN;
        assert!(!compare_tensor("t", &p, &e, Tolerance::BF16).ok);
    }
}
