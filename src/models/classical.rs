//! The classical anchor at one snapshot: BG/NBD (purchases and dropout) and Gamma-Gamma
//! (spend per order), fitted on that snapshot's own history only, in days. Their outputs are
//! both a baseline the backtest compares against and features for the supervised models.
//!
//! A [`Classical`] serializes to its parameters only (the manifest's record) and loads back
//! from them (`serde_json::from_str::<Classical>`) into working models: [`BgNbd`] and
//! [`GammaGamma`] are nothing but their parameters. The fitted parameters are moved to the
//! nearest values serde_json reads back exactly (at most one unit in the last place), so the
//! record stays plain JSON numbers and a loaded `Classical` gives bit-for-bit the outputs of
//! the one that was saved.

use serde::{Deserialize, Serialize};

use super::bgnbd::{BgNbd, Rfm};
use super::gamma_gamma::GammaGamma;
use super::gbm::json_f64::json_exact;
use super::parallel::map_rows;
use crate::error::Result;
use crate::features::CustomerTable;

/// Below this many buyers the classical models are not fitted.
const MIN_BUYERS: usize = 50;
/// Days per month for discounting.
const MONTH_DAYS: f64 = 30.4375;

/// The fitted models of one snapshot (None where there were too few buyers or no fit).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "ClassicalRecord")]
pub struct Classical {
    /// BG/NBD parameters, time in days.
    pub bgnbd: Option<BgNbdParams>,
    /// Gamma-Gamma parameters.
    pub gamma_gamma: Option<GammaGammaParams>,
    /// Buyers the models were fitted on.
    pub fitted_on: usize,
    #[serde(skip)]
    models: (Option<BgNbd>, Option<GammaGamma>),
}

/// A [`Classical`] as read: its parameters, from which the models are rebuilt.
#[derive(Deserialize)]
struct ClassicalRecord {
    bgnbd: Option<BgNbdParams>,
    gamma_gamma: Option<GammaGammaParams>,
    fitted_on: usize,
}

impl From<ClassicalRecord> for Classical {
    fn from(r: ClassicalRecord) -> Classical {
        let bgnbd = r.bgnbd.as_ref().map(|p| BgNbd {
            r: p.r,
            alpha: p.alpha,
            a: p.a,
            b: p.b,
        });
        let gamma_gamma = r.gamma_gamma.as_ref().map(|p| GammaGamma {
            p: p.p,
            q: p.q,
            gamma: p.gamma,
        });
        Classical {
            bgnbd: r.bgnbd,
            gamma_gamma: r.gamma_gamma,
            fitted_on: r.fitted_on,
            models: (bgnbd, gamma_gamma),
        }
    }
}

/// BG/NBD parameters for the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BgNbdParams {
    /// Shape of the purchase-rate gamma.
    pub r: f64,
    /// Scale of the purchase-rate gamma (days).
    pub alpha: f64,
    /// Dropout beta a.
    pub a: f64,
    /// Dropout beta b.
    pub b: f64,
}

/// Gamma-Gamma parameters for the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaParams {
    /// p.
    pub p: f64,
    /// q.
    pub q: f64,
    /// γ.
    pub gamma: f64,
}

/// Per-customer outputs of the classical models (NaN where undefined, e.g. never-buyers).
#[derive(Debug, Clone)]
pub struct Outputs {
    /// P(alive) (BG/NBD).
    pub p_alive: Vec<f64>,
    /// P(no purchase in the next 90 days) (BG/NBD).
    pub p_no_purchase_90d: Vec<f64>,
    /// Expected purchases over the next 365 days, each discounted (BG/NBD).
    pub purchases_pv_365d: Vec<f64>,
    /// Expected spend per order (Gamma-Gamma).
    pub spend: Vec<f64>,
    /// Discounted 365-day CLV: discounted purchases × spend.
    pub clv: Vec<f64>,
    /// Expected purchase days over the next 365 days, undiscounted (BG/NBD).
    pub purchases_365d: Vec<f64>,
    /// Days until P(another purchase) reaches ½, NaN beyond 365 (BG/NBD).
    pub next_purchase_days: Vec<f64>,
}

/// The BG/NBD summary of a customer with a completed order (x repeat purchase days, t_x, T),
/// in whole days: a purchase day counts from its start, as the purchase days are counted
/// (cut-offs are midnight UTC, so `ceil` of the days before the cut-off is the day's distance).
/// Whole days also keep the distinct (x, t_x, T) rows, and so the fit on every buyer, small.
fn rfm(purchase_days: f64, first_days: f64, recency: f64) -> Option<Rfm> {
    (purchase_days >= 1.0 && first_days.is_finite() && recency.is_finite()).then(|| {
        let (t, last) = (first_days.ceil().max(0.0), recency.ceil().max(0.0));
        Rfm {
            x: purchase_days - 1.0,
            t_x: (t - last).max(0.0),
            t,
        }
    })
}

fn rfms(table: &CustomerTable) -> Result<Vec<Option<Rfm>>> {
    let pd = table.f64("purchase_days")?;
    let first = table.f64("first_completed_days")?;
    let rec = table.f64("recency_days")?;
    Ok((0..table.len())
        .map(|i| rfm(pd[i], first[i], rec[i]))
        .collect())
}

impl Classical {
    /// Fits BG/NBD and Gamma-Gamma on every buyer of `table`.
    pub fn fit(table: &CustomerTable) -> Result<Classical> {
        let buyers: Vec<Rfm> = rfms(table)?.into_iter().flatten().collect();
        if buyers.len() < MIN_BUYERS {
            return Ok(Classical::none());
        }
        // Parameters as the manifest will read back (see the module documentation).
        let bgnbd = match BgNbd::fit(&buyers) {
            Ok((m, _)) => Some(BgNbd {
                r: json_exact(m.r),
                alpha: json_exact(m.alpha),
                a: json_exact(m.a),
                b: json_exact(m.b),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "BG/NBD did not fit; its outputs are left empty");
                None
            }
        };
        let freq = table.f64("frequency")?;
        let aov = table.f64("avg_order_value")?;
        let gamma_gamma = match GammaGamma::fit(&freq, &aov) {
            Ok((g, _)) => Some(GammaGamma {
                p: json_exact(g.p),
                q: json_exact(g.q),
                gamma: json_exact(g.gamma),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "Gamma-Gamma did not fit; its outputs are left empty");
                None
            }
        };
        Ok(Classical {
            bgnbd: bgnbd.as_ref().map(|m| BgNbdParams {
                r: m.r,
                alpha: m.alpha,
                a: m.a,
                b: m.b,
            }),
            gamma_gamma: gamma_gamma.as_ref().map(|g| GammaGammaParams {
                p: g.p,
                q: g.q,
                gamma: g.gamma,
            }),
            fitted_on: buyers.len(),
            models: (bgnbd, gamma_gamma),
        })
    }

    fn none() -> Classical {
        Classical {
            bgnbd: None,
            gamma_gamma: None,
            fitted_on: 0,
            models: (None, None),
        }
    }

    /// Whether BG/NBD was fitted.
    pub fn has_bgnbd(&self) -> bool {
        self.models.0.is_some()
    }

    /// The models' outputs for every customer of `table` (another snapshot's table is fine if
    /// it is the same snapshot the models were fitted on: the outputs are conditional on each
    /// customer's history up to that cut-off).
    pub fn outputs(&self, table: &CustomerTable, monthly_rate: f64) -> Result<Outputs> {
        let summaries = rfms(table)?;
        let freq = table.f64("frequency")?;
        let aov = table.f64("avg_order_value")?;
        let n = table.len();
        // Each customer's outputs depend on that customer alone, so they are computed on every
        // core (about 10 µs a buyer: the run's largest snapshot was the model stage's longest
        // thread).
        let one = |i: usize| -> [f64; 7] {
            let mut row = [f64::NAN; 7];
            if let (Some(m), Some(c)) = (&self.models.0, &summaries[i]) {
                row[0] = m.p_alive(c);
                row[1] = m.p_no_purchase(c, 90.0);
                (row[2], row[5]) =
                    m.expected_purchases_discounted_and_not(c, 365.0, MONTH_DAYS, monthly_rate);
                row[6] = m.median_days_to_next_purchase(c, 365.0);
            }
            if let Some(g) = &self.models.1 {
                let (x, m) = if freq[i] >= 1.0 && aov[i] > 0.0 {
                    (freq[i], aov[i])
                } else {
                    (0.0, 0.0)
                };
                row[3] = g.expected_spend(x, m);
            }
            row[4] = row[2] * row[3];
            row
        };
        let rows: Vec<[f64; 7]> = map_rows(n, one);
        let column = |k: usize| rows.iter().map(|r| r[k]).collect::<Vec<f64>>();
        Ok(Outputs {
            p_alive: column(0),
            p_no_purchase_90d: column(1),
            purchases_pv_365d: column(2),
            spend: column(3),
            clv: column(4),
            purchases_365d: column(5),
            next_purchase_days: column(6),
        })
    }
}

impl Outputs {
    /// As named extra feature columns for the design matrix.
    pub fn columns(&self) -> Vec<(&'static str, Vec<f64>)> {
        self.named()
            .into_iter()
            .map(|(name, column)| (name, column.to_vec()))
            .collect()
    }

    /// The names of [`Outputs::columns`], in order.
    pub const NAMES: [&'static str; 5] = [
        "bgnbd_p_alive",
        "bgnbd_p_no_purchase_90d",
        "bgnbd_purchases_pv_365d",
        "gg_spend",
        "bgnbd_gg_clv",
    ];

    /// The extra feature columns of [`Outputs::columns`], borrowed.
    pub fn named(&self) -> [(&'static str, &[f64]); 5] {
        let columns = [
            &self.p_alive,
            &self.p_no_purchase_90d,
            &self.purchases_pv_365d,
            &self.spend,
            &self.clv,
        ];
        std::array::from_fn(|i| (Self::NAMES[i], columns[i].as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray};
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;
    use std::sync::Arc;

    /// `n` customers whose histories (in days) follow BG/NBD: λ ~ Gamma(0.8, 1/40 days),
    /// dropout p ~ Beta(1, 4) after each repeat purchase, observed for 30 to 700 days since
    /// their first order; one in ten never bought.
    fn table(n: usize, seed: u64) -> CustomerTable {
        use rand_distr::{Beta, Distribution, Exp, Gamma};
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let (rate, dropout) = (
            Gamma::new(0.8, 1.0 / 40.0).unwrap(),
            Beta::new(1.0, 4.0).unwrap(),
        );
        let mut cols: [Vec<Option<f64>>; 5] = Default::default();
        for _ in 0..n {
            let row = if rng.gen::<f64>() < 0.1 {
                [Some(0.0), None, None, Some(0.0), None]
            } else {
                let (lambda, p): (f64, f64) = (rate.sample(&mut rng), dropout.sample(&mut rng));
                let gap = Exp::new(lambda.max(1e-9)).unwrap();
                let t_end = rng.gen_range(30.0..700.0f64).floor();
                let (mut x, mut t, mut last) = (0.0, 0.0, 0.0);
                loop {
                    t += gap.sample(&mut rng);
                    if t > t_end {
                        break;
                    }
                    x += 1.0;
                    last = t;
                    if rng.gen::<f64>() < p {
                        break;
                    }
                }
                let aov = rng.gen_range(10.0..150.0);
                [
                    Some(x + 1.0),
                    Some(t_end),
                    Some(t_end - last),
                    Some(x + 1.0),
                    Some(aov),
                ]
            };
            for (c, v) in cols.iter_mut().zip(row) {
                c.push(v);
            }
        }
        let ids: Vec<String> = (0..n).map(|i| format!("C{i:07}")).collect();
        let names = [
            "purchase_days",
            "first_completed_days",
            "recency_days",
            "frequency",
            "avg_order_value",
        ];
        let mut fields = vec![("customer_id", Arc::new(StringArray::from(ids)) as _)];
        for (name, c) in names.into_iter().zip(cols) {
            fields.push((name, Arc::new(Float64Array::from(c)) as _));
        }
        CustomerTable::new(vec![RecordBatch::try_from_iter(fields).unwrap()], "test").unwrap()
    }

    fn all_bits(o: &Outputs) -> Vec<Vec<u64>> {
        o.columns()
            .iter()
            .map(|(_, c)| c.iter().map(|x| x.to_bits()).collect())
            .collect()
    }

    #[test]
    fn stored_classical_gives_the_same_outputs() {
        let t = table(1_500, 4);
        let fitted = Classical::fit(&t).unwrap();
        assert!(fitted.has_bgnbd() && fitted.models.1.is_some());
        let json = serde_json::to_string(&fitted).unwrap();
        // The manifest's shape: parameters as plain numbers, nothing else.
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&v), ["bgnbd", "fitted_on", "gamma_gamma"]);
        assert_eq!(keys(&v["bgnbd"]), ["a", "alpha", "b", "r"]);
        assert_eq!(keys(&v["gamma_gamma"]), ["gamma", "p", "q"]);
        for p in ["r", "alpha", "a", "b"] {
            assert!(v["bgnbd"][p].is_f64(), "{p}: {}", v["bgnbd"][p]);
        }
        for p in ["p", "q", "gamma"] {
            assert!(v["gamma_gamma"][p].is_f64(), "{p}: {}", v["gamma_gamma"][p]);
        }

        let loaded: Classical = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&loaded).unwrap(), json);
        assert_eq!(loaded.models.0, fitted.models.0);
        assert_eq!(loaded.models.1, fitted.models.1);
        assert!(loaded.has_bgnbd());
        // On the snapshot it was fitted on and on another one (never-buyers give NaN).
        for t in [&t, &table(800, 5)] {
            let a = fitted.outputs(t, 0.01).unwrap();
            let b = loaded.outputs(t, 0.01).unwrap();
            assert!(a.p_alive.iter().any(|x| x.is_nan()));
            assert!(a.clv.iter().any(|x| x.is_finite() && *x > 0.0));
            assert_eq!(all_bits(&b), all_bits(&a));
        }
    }

    /// The slope of `ll` (per customer) along each log-parameter at `theta`.
    fn slopes(theta: &[f64], ll: impl Fn(&[f64]) -> f64) -> Vec<f64> {
        (0..theta.len())
            .map(|i| {
                let (mut up, mut down) = (theta.to_vec(), theta.to_vec());
                up[i] += 1e-5;
                down[i] -= 1e-5;
                (ll(&up) - ll(&down)) / 2e-5
            })
            .collect()
    }

    #[test]
    fn every_buyer_enters_the_fit() {
        let t = table(50_000, 11);
        let fitted = Classical::fit(&t).unwrap();
        let buyers: Vec<Rfm> = rfms(&t).unwrap().into_iter().flatten().collect();
        assert!(buyers.len() > 40_000);
        assert_eq!(fitted.fitted_on, buyers.len());
        // Whole days, as the purchase days are counted.
        assert!(buyers
            .iter()
            .all(|c| c.t == c.t.floor() && c.t_x == c.t_x.floor()));

        // The maximum of everyone's likelihood: flat in every log-parameter …
        let (Some(bg), Some(gg)) = fitted.models else {
            panic!("not fitted: {fitted:?}")
        };
        let n = buyers.len() as f64;
        let bg_ll = |th: &[f64]| {
            let m = BgNbd {
                r: th[0].exp(),
                alpha: th[1].exp(),
                a: th[2].exp(),
                b: th[3].exp(),
            };
            m.log_likelihood(&buyers) / n
        };
        let theta = [bg.r.ln(), bg.alpha.ln(), bg.a.ln(), bg.b.ln()];
        for (i, g) in slopes(&theta, bg_ll).into_iter().enumerate() {
            assert!(g.abs() < 1e-7, "BG/NBD d/dθ{i} = {g}");
        }
        let (freq, aov) = (
            t.f64("frequency").unwrap(),
            t.f64("avg_order_value").unwrap(),
        );
        let spenders = freq.iter().filter(|x| **x >= 1.0).count() as f64;
        let gg_ll = |th: &[f64]| {
            let m = GammaGamma {
                p: th[0].exp(),
                q: th[1].exp(),
                gamma: th[2].exp(),
            };
            m.log_likelihood(&freq, &aov) / spenders
        };
        let theta = [gg.p.ln(), gg.q.ln(), gg.gamma.ln()];
        for (i, g) in slopes(&theta, gg_ll).into_iter().enumerate() {
            assert!(g.abs() < 1e-7, "Gamma-Gamma d/dθ{i} = {g}");
        }
        // … which a fifth of them does not reach.
        let fifth: Vec<Rfm> = buyers.iter().step_by(5).copied().collect();
        let (sampled, _) = BgNbd::fit(&fifth).unwrap();
        assert!(
            bg.log_likelihood(&buyers) > sampled.log_likelihood(&buyers) + 0.1,
            "{bg:?} vs {sampled:?}"
        );
    }

    #[test]
    fn stored_empty_classical_stays_empty() {
        let t = table(30, 6);
        let none = Classical::fit(&t).unwrap();
        assert!(!none.has_bgnbd());
        let json = serde_json::to_string(&none).unwrap();
        assert_eq!(json, r#"{"bgnbd":null,"gamma_gamma":null,"fitted_on":0}"#);
        let loaded: Classical = serde_json::from_str(&json).unwrap();
        assert!(!loaded.has_bgnbd());
        let o = loaded.outputs(&t, 0.01).unwrap();
        assert!(o.clv.iter().all(|x| x.is_nan()));
    }
}
