//! The classical anchor at one snapshot: BG/NBD (purchases and dropout) and Gamma-Gamma
//! (spend per order), fitted on that snapshot's own history only, in days. Their outputs are
//! both a baseline the backtest compares against and features for the supervised models.

use serde::Serialize;

use super::bgnbd::{BgNbd, Rfm};
use super::design::rows_in_part;
use super::gamma_gamma::GammaGamma;
use super::parallel::map_rows;
use crate::error::Result;
use crate::features::CustomerTable;

/// Buyers sampled to fit the classical models: parameters are population-level, so a large
/// deterministic sample is as good as everyone and keeps the fit fast.
const FIT_SAMPLE: usize = 10_000;
/// Below this many buyers the classical models are not fitted.
const MIN_BUYERS: usize = 50;
/// Days per month for discounting.
const MONTH_DAYS: f64 = 30.4375;

/// The fitted models of one snapshot (None where there were too few buyers or no fit).
#[derive(Debug, Clone, Serialize)]
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

/// BG/NBD parameters for the manifest.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
}

/// The BG/NBD summary of a customer with a completed order (x repeat purchase days, t_x, T).
fn rfm(purchase_days: f64, first_days: f64, recency: f64) -> Option<Rfm> {
    (purchase_days >= 1.0 && first_days.is_finite() && recency.is_finite()).then(|| Rfm {
        x: purchase_days - 1.0,
        t_x: (first_days - recency).max(0.0),
        t: first_days.max(0.0),
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
    /// Fits BG/NBD and Gamma-Gamma on (a sample of) the buyers of `table`.
    pub fn fit(table: &CustomerTable) -> Result<Classical> {
        let ids = table.ids()?;
        let summaries = rfms(table)?;
        let buyer_ids: Vec<String> = ids
            .iter()
            .zip(&summaries)
            .filter(|(_, r)| r.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        let buyers: Vec<Rfm> = summaries.iter().flatten().cloned().collect();
        if buyers.len() < MIN_BUYERS {
            return Ok(Classical::none());
        }
        let sample: Vec<Rfm> = rows_in_part(&buyer_ids, 1, 0, 1, FIT_SAMPLE)
            .into_iter()
            .map(|i| buyers[i])
            .collect();
        let bgnbd = match BgNbd::fit(&sample) {
            Ok((m, _)) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "BG/NBD did not fit; its outputs are left empty");
                None
            }
        };
        let freq = table.f64("frequency")?;
        let aov = table.f64("avg_order_value")?;
        let rows = rows_in_part(&ids, 1, 0, 1, FIT_SAMPLE);
        let (f, m): (Vec<f64>, Vec<f64>) = rows
            .iter()
            .filter(|&&i| freq[i] >= 1.0 && aov[i] > 0.0)
            .map(|&i| (freq[i], aov[i]))
            .unzip();
        let gamma_gamma = match GammaGamma::fit(&f, &m) {
            Ok((g, _)) => Some(g),
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
            fitted_on: sample.len(),
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
        let one = |i: usize| -> [f64; 5] {
            let mut row = [f64::NAN; 5];
            if let (Some(m), Some(c)) = (&self.models.0, &summaries[i]) {
                row[0] = m.p_alive(c);
                row[1] = m.p_no_purchase(c, 90.0);
                row[2] = m.discounted_expected_purchases(c, 365.0, MONTH_DAYS, monthly_rate);
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
        let rows: Vec<[f64; 5]> = map_rows(n, one);
        let column = |k: usize| rows.iter().map(|r| r[k]).collect::<Vec<f64>>();
        Ok(Outputs {
            p_alive: column(0),
            p_no_purchase_90d: column(1),
            purchases_pv_365d: column(2),
            spend: column(3),
            clv: column(4),
        })
    }
}

impl Outputs {
    /// As named extra feature columns for the design matrix.
    pub fn columns(&self) -> Vec<(&'static str, Vec<f64>)> {
        vec![
            ("bgnbd_p_alive", self.p_alive.clone()),
            ("bgnbd_p_no_purchase_90d", self.p_no_purchase_90d.clone()),
            ("bgnbd_purchases_pv_365d", self.purchases_pv_365d.clone()),
            ("gg_spend", self.spend.clone()),
            ("bgnbd_gg_clv", self.clv.clone()),
        ]
    }
}
