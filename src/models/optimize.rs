//! Maximum-likelihood fitting machinery shared by the customer-base models: a deterministic
//! Nelder–Mead simplex minimiser, a multi-start driver that polishes the best run with
//! restarts, and the [`FitInfo`] / [`ModelError`] types the model fits return.

use serde::Serialize;

/// How a maximum-likelihood fit went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FitInfo {
    /// Nelder–Mead iterations over all starting points and restarts.
    pub iterations: usize,
    /// The maximised log-likelihood (summed over customers).
    pub log_likelihood: f64,
    /// Whether the simplex met its tolerances and the optimum is inside the parameter box.
    pub converged: bool,
    /// Customers the fit used.
    pub n: usize,
}

/// Why a model could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// Not enough usable customers for a meaningful fit.
    #[error("too few customers to fit {model}: {n} usable, at least {min} needed")]
    TooFewCustomers {
        /// The model being fitted.
        model: &'static str,
        /// Usable customers found.
        n: usize,
        /// The minimum the fit needs.
        min: usize,
    },
    /// An input row is outside the model's domain (negative, non-finite, t_x > T, …).
    #[error("invalid input for {model} at row {index}: {reason}")]
    InvalidData {
        /// The model being fitted.
        model: &'static str,
        /// Row of the offending input.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The data carry no information about a parameter (e.g. nobody made a repeat purchase).
    #[error("{model} cannot be identified: {reason}")]
    Degenerate {
        /// The model being fitted.
        model: &'static str,
        /// What is missing.
        reason: String,
    },
    /// The log-likelihood was not finite anywhere the optimiser looked.
    #[error("{model} log-likelihood is not finite at any starting point")]
    NonFiniteLikelihood {
        /// The model being fitted.
        model: &'static str,
    },
}

/// Settings of the Nelder–Mead simplex minimiser.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NelderMead {
    /// Stop after this many objective evaluations.
    pub max_evaluations: usize,
    /// Converged when the simplex's values differ by at most this × (1 + |best|) …
    pub f_tolerance: f64,
    /// … and its vertices are within this distance of the best one in every coordinate.
    pub x_tolerance: f64,
    /// Edge of the initial simplex along each coordinate.
    pub initial_step: f64,
}

impl Default for NelderMead {
    fn default() -> Self {
        NelderMead {
            max_evaluations: 4_000,
            f_tolerance: 1e-13,
            x_tolerance: 1e-7,
            initial_step: 0.5,
        }
    }
}

/// Where a minimisation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Minimum {
    /// The best point found.
    pub x: Vec<f64>,
    /// The objective there (+inf when it was never finite).
    pub value: f64,
    /// Simplex iterations.
    pub iterations: usize,
    /// Objective evaluations.
    pub evaluations: usize,
    /// Whether both tolerances were met.
    pub converged: bool,
}

impl NelderMead {
    /// Minimises `f` from `x0` (non-finite values count as +inf, i.e. infeasible).
    ///
    /// Uses the dimension-adaptive coefficients of Gao & Han (2012); fully deterministic.
    pub fn minimize(&self, mut f: impl FnMut(&[f64]) -> f64, x0: &[f64]) -> Minimum {
        let n = x0.len();
        let mut eval = |x: &[f64], count: &mut usize| {
            *count += 1;
            let v = f(x);
            if v.is_finite() {
                v
            } else {
                f64::INFINITY
            }
        };
        let mut evaluations = 0;
        if n == 0 {
            let value = eval(x0, &mut evaluations);
            return Minimum {
                x: Vec::new(),
                value,
                iterations: 0,
                evaluations,
                converged: true,
            };
        }
        let nf = n as f64;
        let (reflect, expand, contract, shrink) =
            (1.0, 1.0 + 2.0 / nf, 0.75 - 1.0 / (2.0 * nf), 1.0 - 1.0 / nf);

        let mut simplex: Vec<Vec<f64>> = Vec::with_capacity(n + 1);
        simplex.push(x0.to_vec());
        for i in 0..n {
            let mut v = x0.to_vec();
            v[i] += self.initial_step;
            simplex.push(v);
        }
        let mut values: Vec<f64> = simplex.iter().map(|v| eval(v, &mut evaluations)).collect();
        let mut iterations = 0;
        let mut converged = false;

        while evaluations < self.max_evaluations {
            // Order vertices best → worst; ties keep their order, so runs are reproducible.
            let mut order: Vec<usize> = (0..=n).collect();
            order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
            simplex = order.iter().map(|&i| simplex[i].clone()).collect();
            values = order.iter().map(|&i| values[i]).collect();

            let best = values[0];
            let worst = values[n];
            let f_spread = worst - best;
            let x_spread = simplex[1..]
                .iter()
                .flat_map(|v| v.iter().zip(&simplex[0]).map(|(a, b)| (a - b).abs()))
                .fold(0.0, f64::max);
            if best.is_finite()
                && f_spread <= self.f_tolerance * (1.0 + best.abs())
                && x_spread <= self.x_tolerance
            {
                converged = true;
                break;
            }
            iterations += 1;

            let mut centroid = vec![0.0; n];
            for v in &simplex[..n] {
                for (c, x) in centroid.iter_mut().zip(v) {
                    *c += x / nf;
                }
            }
            let along = |t: f64| -> Vec<f64> {
                centroid
                    .iter()
                    .zip(&simplex[n])
                    .map(|(c, w)| c + t * (c - w))
                    .collect()
            };

            let xr = along(reflect);
            let fr = eval(&xr, &mut evaluations);
            if fr < values[0] {
                let xe = along(reflect * expand);
                let fe = eval(&xe, &mut evaluations);
                if fe < fr {
                    simplex[n] = xe;
                    values[n] = fe;
                } else {
                    simplex[n] = xr;
                    values[n] = fr;
                }
                continue;
            }
            if fr < values[n - 1] {
                simplex[n] = xr;
                values[n] = fr;
                continue;
            }
            // Contract: outside if the reflection helped over the worst, inside otherwise.
            let (xc, fc, accept) = if fr < values[n] {
                let xc = along(reflect * contract);
                let fc = eval(&xc, &mut evaluations);
                let ok = fc <= fr;
                (xc, fc, ok)
            } else {
                let xc = along(-contract);
                let fc = eval(&xc, &mut evaluations);
                let ok = fc < values[n];
                (xc, fc, ok)
            };
            if accept {
                simplex[n] = xc;
                values[n] = fc;
                continue;
            }
            let x_best = simplex[0].clone();
            for i in 1..=n {
                let v: Vec<f64> = x_best
                    .iter()
                    .zip(&simplex[i])
                    .map(|(b, x)| b + shrink * (x - b))
                    .collect();
                values[i] = eval(&v, &mut evaluations);
                simplex[i] = v;
            }
        }

        let best = (0..=n)
            .min_by(|&i, &j| values[i].total_cmp(&values[j]))
            .unwrap_or(0);
        Minimum {
            x: simplex[best].clone(),
            value: values[best],
            iterations,
            evaluations,
            converged,
        }
    }
}

/// Minimises `f` from each start, keeps the best run (the earliest on ties) and polishes it
/// with fresh, smaller simplices until a restart no longer improves the value.
///
/// Restarting is the classical guard against Nelder–Mead collapsing onto a non-stationary
/// point. The returned `iterations` and `evaluations` add up every run.
pub fn minimize_multistart(
    settings: &NelderMead,
    mut f: impl FnMut(&[f64]) -> f64,
    starts: &[Vec<f64>],
) -> Minimum {
    let mut best: Option<Minimum> = None;
    let mut iterations = 0;
    let mut evaluations = 0;
    for start in starts {
        let run = settings.minimize(&mut f, start);
        iterations += run.iterations;
        evaluations += run.evaluations;
        if best.as_ref().is_none_or(|b| run.value < b.value) {
            best = Some(run);
        }
    }
    let Some(mut best) = best else {
        return Minimum {
            x: Vec::new(),
            value: f64::INFINITY,
            iterations,
            evaluations,
            converged: false,
        };
    };
    if best.value.is_finite() {
        let polish = NelderMead {
            initial_step: settings.initial_step * 0.1,
            ..*settings
        };
        for _ in 0..10 {
            let run = polish.minimize(&mut f, &best.x);
            iterations += run.iterations;
            evaluations += run.evaluations;
            let improved = run.value < best.value - settings.f_tolerance * (1.0 + best.value.abs());
            if run.value <= best.value {
                best = run;
            }
            if !improved {
                break;
            }
        }
    }
    best.iterations = iterations;
    best.evaluations = evaluations;
    best
}

/// Settings of the Newton polisher ([`Newton::minimize`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Newton {
    /// Stop after this many Newton steps.
    pub max_iterations: usize,
    /// Step of the central differences that give the gradient and the Hessian.
    pub difference_step: f64,
    /// Converged when half the Newton decrement −g·d is at most this × (1 + |f|).
    pub tolerance: f64,
}

impl Default for Newton {
    fn default() -> Self {
        Newton {
            max_iterations: 50,
            difference_step: 1e-5,
            tolerance: 1e-13,
        }
    }
}

impl Newton {
    /// Minimises a smooth `f` from a point `x0` near its minimum by Newton's method, the
    /// gradient and Hessian taken by central differences of `f` (1 + 2n² evaluations a step),
    /// damped Levenberg–Marquardt style whenever the Hessian is not positive definite or the
    /// full step does not go downhill. Deterministic.
    ///
    /// Meant to finish what a cheaper search started: Nelder–Mead on a sample of the data finds
    /// the basin, a few Newton steps on all of it reach the optimum to the differences'
    /// precision at a small multiple of one evaluation's cost.
    pub fn minimize(&self, mut f: impl FnMut(&[f64]) -> f64, x0: &[f64]) -> Minimum {
        let n = x0.len();
        let h = self.difference_step;
        let mut evaluations = 0;
        let mut eval = |x: &[f64], count: &mut usize| {
            *count += 1;
            let v = f(x);
            if v.is_finite() {
                v
            } else {
                f64::INFINITY
            }
        };
        let mut x = x0.to_vec();
        let mut value = eval(&x, &mut evaluations);
        let mut iterations = 0;
        let mut converged = false;
        // Levenberg–Marquardt damping, kept between steps: a tenth of it after a step that
        // went downhill, ten times it after one that did not.
        let mut damping: f64 = 0.0;
        while value.is_finite() && iterations < self.max_iterations {
            iterations += 1;
            let at = |x: &[f64], moves: &[(usize, f64)]| {
                let mut y = x.to_vec();
                for &(i, d) in moves {
                    y[i] += d;
                }
                y
            };
            let mut gradient = vec![0.0; n];
            let mut hessian = vec![vec![0.0; n]; n];
            for i in 0..n {
                let mut lower = vec![0.0; i];
                let up = eval(&at(&x, &[(i, h)]), &mut evaluations);
                let down = eval(&at(&x, &[(i, -h)]), &mut evaluations);
                gradient[i] = (up - down) / (2.0 * h);
                hessian[i][i] = (up - 2.0 * value + down) / (h * h);
                for (j, column) in (0..i).zip(&mut lower) {
                    let corners = [(h, h), (h, -h), (-h, h), (-h, -h)]
                        .map(|(di, dj)| eval(&at(&x, &[(i, di), (j, dj)]), &mut evaluations));
                    let hij = (corners[0] - corners[1] - corners[2] + corners[3]) / (4.0 * h * h);
                    hessian[i][j] = hij;
                    *column = hij;
                }
                for (j, hij) in lower.drain(..).enumerate() {
                    hessian[j][i] = hij;
                }
            }
            if gradient
                .iter()
                .chain(hessian.iter().flatten())
                .any(|v| !v.is_finite())
            {
                break;
            }
            let scale = hessian
                .iter()
                .enumerate()
                .map(|(i, row)| row[i].abs())
                .fold(0.0, f64::max)
                .max(1e-12);
            let mut accepted = false;
            for _ in 0..40 {
                let step = solve_damped(&hessian, &gradient, damping);
                if let Some(step) = step {
                    let decrement: f64 =
                        -gradient.iter().zip(&step).map(|(g, d)| g * d).sum::<f64>();
                    let next: Vec<f64> = x.iter().zip(&step).map(|(a, d)| a + d).collect();
                    let next_value = eval(&next, &mut evaluations);
                    if next_value <= value {
                        converged = decrement / 2.0 <= self.tolerance * (1.0 + value.abs());
                        (x, value, accepted) = (next, next_value, true);
                        damping = if damping < 1e-9 * scale {
                            0.0
                        } else {
                            damping / 10.0
                        };
                        break;
                    }
                    if decrement / 2.0 <= self.tolerance * (1.0 + value.abs()) {
                        // Within the differences' noise of the optimum: stay.
                        converged = true;
                        break;
                    }
                }
                damping = if damping == 0.0 {
                    1e-6 * scale
                } else {
                    damping * 10.0
                };
            }
            if converged || !accepted {
                break;
            }
        }
        Minimum {
            x,
            value,
            iterations,
            evaluations,
            converged,
        }
    }
}

/// Solves (H + μI) d = −g by Cholesky; `None` when H + μI is not positive definite.
fn solve_damped(hessian: &[Vec<f64>], gradient: &[f64], damping: f64) -> Option<Vec<f64>> {
    let n = gradient.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s = hessian[i][j] + if i == j { damping } else { 0.0 }
                - l[i][..j]
                    .iter()
                    .zip(&l[j][..j])
                    .map(|(a, b)| a * b)
                    .sum::<f64>();
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i][i] = s.sqrt();
            } else {
                l[i][j] = s / l[j][j];
            }
        }
    }
    // L y = −g, then Lᵀ d = y.
    let mut y = vec![0.0; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i][k] * y[k]).sum();
        y[i] = (-gradient[i] - s) / l[i][i];
    }
    let mut d = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k][i] * d[k]).sum();
        d[i] = (y[i] - s) / l[i][i];
    }
    Some(d)
}

/// Rows of the sample Nelder–Mead runs on before Newton finishes on all rows
/// ([`minimize_sampled_then_full`]).
pub const START_SAMPLE: usize = 20_000;

/// Keep every this-many-th row for a start sample of at most [`START_SAMPLE`] rows.
pub fn start_stride(rows: usize) -> usize {
    rows.div_ceil(START_SAMPLE).max(1)
}

/// Maximum likelihood on a large data set: Nelder–Mead from `starts` on `sample` (a cheap
/// stand-in that finds the basin), then Newton on `full` from there, so the optimum is that
/// of every row. Should Newton not settle, Nelder–Mead polishes on `full` from where it got.
/// The returned counts add up all stages; `value` is `full`'s.
pub fn minimize_sampled_then_full(
    settings: &NelderMead,
    sample: impl FnMut(&[f64]) -> f64,
    mut full: impl FnMut(&[f64]) -> f64,
    starts: &[Vec<f64>],
) -> Minimum {
    let start = minimize_multistart(settings, sample, starts);
    if !start.value.is_finite() {
        return start;
    }
    let newton = Newton::default().minimize(&mut full, &start.x);
    let mut best = if newton.converged {
        newton.clone()
    } else {
        let polish = NelderMead {
            initial_step: settings.initial_step * 0.1,
            ..*settings
        };
        let from = if newton.value.is_finite() {
            &newton.x
        } else {
            &start.x
        };
        minimize_multistart(&polish, &mut full, std::slice::from_ref(from))
    };
    best.iterations += start.iterations
        + if newton.converged {
            0
        } else {
            newton.iterations
        };
    best.evaluations += start.evaluations
        + if newton.converged {
            0
        } else {
            newton.evaluations
        };
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rosenbrock(x: &[f64]) -> f64 {
        (1.0 - x[0]).powi(2) + 100.0 * (x[1] - x[0] * x[0]).powi(2)
    }

    #[test]
    fn finds_the_rosenbrock_minimum() {
        let m = NelderMead::default().minimize(rosenbrock, &[-1.2, 1.0]);
        assert!(m.converged, "{m:?}");
        assert!(
            (m.x[0] - 1.0).abs() < 1e-6 && (m.x[1] - 1.0).abs() < 1e-6,
            "{m:?}"
        );
    }

    #[test]
    fn finds_a_quadratic_minimum_in_four_dimensions() {
        let centre = [0.3, -2.0, 5.0, 1e-3];
        let f = |x: &[f64]| {
            x.iter()
                .zip(&centre)
                .enumerate()
                .map(|(i, (a, c))| (i + 1) as f64 * (a - c).powi(2))
                .sum()
        };
        let m = minimize_multistart(&NelderMead::default(), f, &[vec![0.0; 4], vec![1.0; 4]]);
        assert!(m.converged);
        for (a, c) in m.x.iter().zip(&centre) {
            assert!((a - c).abs() < 1e-6, "{m:?}");
        }
    }

    #[test]
    fn treats_non_finite_values_as_infeasible() {
        // Minimum of (x−2)² subject to x < 3 (NaN beyond): start next to the wall.
        let f = |x: &[f64]| {
            if x[0] >= 3.0 {
                f64::NAN
            } else {
                (x[0] - 2.0).powi(2)
            }
        };
        let m = NelderMead {
            initial_step: 5.0,
            ..NelderMead::default()
        }
        .minimize(f, &[2.9]);
        assert!((m.x[0] - 2.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn is_deterministic() {
        let a = minimize_multistart(
            &NelderMead::default(),
            rosenbrock,
            &[vec![-1.2, 1.0], vec![2.0, 2.0]],
        );
        let b = minimize_multistart(
            &NelderMead::default(),
            rosenbrock,
            &[vec![-1.2, 1.0], vec![2.0, 2.0]],
        );
        assert_eq!(a, b);
    }

    #[test]
    fn newton_finishes_from_near_the_minimum() {
        let m = Newton::default().minimize(rosenbrock, &[0.8, 0.7]);
        assert!(m.converged, "{m:?}");
        assert!(
            (m.x[0] - 1.0).abs() < 1e-6 && (m.x[1] - 1.0).abs() < 1e-6,
            "{m:?}"
        );
        // A quadratic is one step (its differences are exact up to rounding).
        let centre = [0.3, -2.0, 5.0, 1e-3];
        let quadratic = |x: &[f64]| -> f64 {
            x.iter()
                .zip(&centre)
                .enumerate()
                .map(|(i, (a, c))| (i + 1) as f64 * (a - c).powi(2))
                .sum::<f64>()
                + 0.5 * (x[0] - centre[0]) * (x[1] - centre[1])
        };
        let q = Newton::default().minimize(quadratic, &[0.0; 4]);
        assert!(q.converged && q.iterations <= 3, "{q:?}");
        for (a, c) in q.x.iter().zip(&centre) {
            assert!((a - c).abs() < 1e-7, "{q:?}");
        }
    }

    #[test]
    fn newton_goes_downhill_where_the_hessian_is_not_positive() {
        // x⁴ − x² + 0.1x: concave at 0.3, minima near −0.73 and 0.68.
        let f = |x: &[f64]| x[0].powi(4) - x[0].powi(2) + 0.1 * x[0];
        let m = Newton::default().minimize(f, &[0.3]);
        assert!(m.converged, "{m:?}");
        let slope = 4.0 * m.x[0].powi(3) - 2.0 * m.x[0] + 0.1;
        let curvature = 12.0 * m.x[0].powi(2) - 2.0;
        assert!(
            slope.abs() < 1e-6 && curvature > 0.0 && f(&m.x) < f(&[0.3]),
            "{m:?}"
        );
    }

    #[test]
    fn sampled_search_ends_at_the_full_optimum() {
        // The "sample" objective is off-centre; the answer must be the full one's.
        let sample = |x: &[f64]| (x[0] - 1.2).powi(2) + 3.0 * (x[1] + 0.4).powi(2);
        let full = |x: &[f64]| (x[0] - 1.0).powi(2) + 3.0 * (x[1] + 0.5).powi(2) + x[0] * x[1];
        let m = minimize_sampled_then_full(&NelderMead::default(), sample, full, &[vec![0.0, 0.0]]);
        // ∇ = 0: 2(x−1) + y = 0, 6(y+0.5) + x = 0.
        let (x, y) = (m.x[0], m.x[1]);
        assert!(m.converged, "{m:?}");
        assert!((2.0 * (x - 1.0) + y).abs() < 1e-7 && (6.0 * (y + 0.5) + x).abs() < 1e-7);
        assert_eq!(m.value, full(&m.x));
    }

    #[test]
    fn reports_when_the_budget_runs_out() {
        let settings = NelderMead {
            max_evaluations: 20,
            ..NelderMead::default()
        };
        let m = settings.minimize(rosenbrock, &[-1.2, 1.0]);
        assert!(!m.converged);
        assert!(m.value.is_finite());
    }
}
