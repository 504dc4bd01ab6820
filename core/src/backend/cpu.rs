//! The CPU backend: rayon over chunks of [`CHUNK`] elements, inputs decoded to f32 per chunk,
//! f32 arithmetic in the order the [`Backend`] docs give (the GPU kernels follow it too).

use std::cell::RefCell;

use super::{Backend, BackendError, Combine};
use crate::checkpoint::TensorView;
use crate::merge::kernel::{CHUNK, gram, zip_map};

/// Runs on the CPU's cores (rayon's global pool).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

thread_local! {
    /// Per-thread rows of the combine pass (see `Cpu::combine`).
    static COMBINE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Backend for Cpu {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn weighted_sum(
        &self,
        inputs: &[TensorView<'_>],
        coefficients: &[f32],
        divisor: Option<f32>,
        out: &mut [f32],
    ) -> Result<(), BackendError> {
        zip_map(inputs, out, |_, xs, o| {
            o.fill(0.0);
            for (x, &c) in xs.iter().zip(coefficients) {
                for (o, &x) in o.iter_mut().zip(x.iter()) {
                    *o += x * c;
                }
            }
            if let Some(d) = divisor {
                for o in o.iter_mut() {
                    *o /= d;
                }
            }
        });
        Ok(())
    }

    fn gram(
        &self,
        inputs: &[TensorView<'_>],
        center: Option<TensorView<'_>>,
    ) -> Result<Vec<f64>, BackendError> {
        Ok(gram(inputs, center))
    }

    fn combine(&self, c: &Combine<'_>, out: &mut [f32]) -> Result<(), BackendError> {
        let mut all = Vec::with_capacity(c.models.len() + 1);
        all.push(c.base);
        all.extend(c.models.iter().copied());
        let n_models = c.models.len();
        zip_map(&all, out, |start, xs, o| {
            let (b, models) = xs.split_first().expect("the base is the first input");
            let len = o.len();
            COMBINE.with_borrow_mut(|scratch| {
                // Laid out as N rows of masked, weighted deltas, then the per-element sum, the
                // agreeing sum and the agreeing weight: every loop below runs over contiguous
                // f32 rows and vectorises.
                scratch.resize((n_models + 3) * CHUNK, 0.0);
                let (deltas, rest) = scratch.split_at_mut(n_models * CHUNK);
                let (total, rest) = rest.split_at_mut(CHUNK);
                let (mixed, divisor) = rest.split_at_mut(CHUNK);
                let (total, mixed, divisor) =
                    (&mut total[..len], &mut mixed[..len], &mut divisor[..len]);
                for (i, x) in models.iter().enumerate() {
                    let d = &mut deltas[i * CHUNK..i * CHUNK + len];
                    let (w, f) = (c.weights[i], c.factors[i]);
                    match &c.masks[i] {
                        None => {
                            for ((d, &x), &b) in d.iter_mut().zip(x.iter()).zip(b.iter()) {
                                *d = w * ((x - b) * f);
                            }
                        }
                        Some(mask) => {
                            // Multiplying by the mask bit as 0.0/1.0 keeps the loop branch-free.
                            let words = mask.words_of_chunk(start);
                            let groups = d
                                .chunks_mut(64)
                                .zip(x.chunks(64))
                                .zip(b.chunks(64))
                                .zip(words);
                            for (((dg, xg), bg), &word) in groups {
                                for (k, ((d, &x), &b)) in dg.iter_mut().zip(xg).zip(bg).enumerate()
                                {
                                    let keep = ((word >> k) & 1) as f32;
                                    *d = w * ((x - b) * keep * f);
                                }
                            }
                        }
                    }
                }
                total.fill(0.0);
                mixed.fill(0.0);
                for i in 0..n_models {
                    let d = &deltas[i * CHUNK..i * CHUNK + len];
                    let sum = if c.consensus {
                        &mut *total
                    } else {
                        &mut *mixed
                    };
                    for (t, &d) in sum.iter_mut().zip(d) {
                        *t += d;
                    }
                }
                if c.consensus {
                    // Sign election: a sum of exactly 0 elects +1; zero deltas never agree.
                    divisor.fill(0.0);
                    for i in 0..n_models {
                        let d = &deltas[i * CHUNK..i * CHUNK + len];
                        let w = c.weights[i];
                        for (((m, q), &t), &d) in mixed
                            .iter_mut()
                            .zip(divisor.iter_mut())
                            .zip(total.iter())
                            .zip(d)
                        {
                            let agree = if t >= 0.0 { d > 0.0 } else { d < 0.0 };
                            *m += if agree { d } else { 0.0 };
                            *q += if agree { w } else { 0.0 };
                        }
                    }
                    for q in divisor.iter_mut() {
                        if *q == 0.0 {
                            *q = 1.0;
                        }
                    }
                } else {
                    divisor.fill(c.plain_divisor);
                }
                for (((o, &b), &m), &q) in o
                    .iter_mut()
                    .zip(b.iter())
                    .zip(mixed.iter())
                    .zip(divisor.iter())
                {
                    let mut m = if c.normalize { m / q } else { m };
                    if c.lambda != 1.0 {
                        m *= c.lambda;
                    }
                    *o = b + m;
                }
            });
        });
        Ok(())
    }

    fn nearswap(
        &self,
        a: TensorView<'_>,
        b: TensorView<'_>,
        t: f32,
        out: &mut [f32],
    ) -> Result<(), BackendError> {
        zip_map(&[a, b], out, |_, xs, o| {
            for ((o, &a), &b) in o.iter_mut().zip(xs[0]).zip(xs[1]) {
                let w = (t / (a - b).abs().max(1e-6)).clamp(0.0, 1.0);
                *o = w * b + (1.0 - w) * a;
            }
        });
        Ok(())
    }
}
