//! The sign-up campaign ([`GenerateOptions::campaign_signups`](super::GenerateOptions)):
//! customers of type `campaign_signup` who sign up in the last `campaign_days` days before the
//! end of the data, and whose behaviour differs from the regular customers' (see "The sign-up
//! campaign" in the module documentation of `generate`).
//!
//! Each campaign customer has a latent *intent* (lognormal, mean 1; a dormant share who only
//! came for the welcome offer has a twentieth of it) and an *interest* that decays after the
//! sign-up: `interest(age) = FLOOR + (1 - FLOOR) * exp(-age / decay)`, `decay` uniform in
//! [`DECAY_DAYS`]. Browse sessions and the first order are both calendar-modulated Poisson
//! processes with rate `intent * interest(age)` times [`BROWSE_PER_DAY`] and
//! [`FIRST_ORDER_PER_DAY`] (the first order may fall before or after the end of the data). So
//! what a model can observe at the end (sessions since the sign-up, their product views and add
//! to carts, the recency of the last visit, the age of the account) estimates what drives the
//! first order after the end (intent times the interest left): the most engaged never-buyers
//! convert several times as often as the others.

use rand::Rng;
use rand_distr::{Beta, Distribution, StandardNormal};

use super::world::{
    pick, round2, ChunkGen, CustomerRow, TruthRow, CANCELLED, COMPLETED, DAYS_PER_YEAR,
    FUTURE_DAYS, RETURNED, T_CAMPAIGN,
};

/// Share of campaign sign-ups who came for the welcome offer only ...
const DORMANT_SHARE: f64 = 0.35;
/// ... and their intent, relative to the others'.
const DORMANT_FACTOR: f64 = 0.05;
/// Lognormal sigma of the intent across campaign customers (mean 1).
const INTENT_SIGMA: f64 = 1.0;
/// Range of the time constant (days) of the interest's decay after the sign-up ...
const DECAY_DAYS: (f64, f64) = (15.0, 60.0);
/// ... and the interest that is left in the long run.
const INTEREST_FLOOR: f64 = 0.1;
/// Browse sessions per day at intent 1 and full interest.
const BROWSE_PER_DAY: f64 = 0.3;
/// Hazard (per day) of the first order at intent 1 and full interest.
const FIRST_ORDER_PER_DAY: f64 = 0.023;
/// Mean lifetime from the sign-up, in days: after the dropout no more sessions or orders.
const LIFETIME_DAYS: f64 = 500.0;
/// Gamma mean and shape across customers of the repeat order rate (orders per year) after the
/// first order.
const REPEAT_RATE: (f64, f64) = (4.0, 2.0);
/// Gamma mean and shape of the customers' mean order value, and the lognormal sigma of the
/// orders around it.
const AOV: (f64, f64) = (60.0, 3.0);
const ORDER_SIGMA: f64 = 0.6;
/// Probability that the first order uses the campaign's welcome discount (10-20 %).
const WELCOME_DISCOUNT_P: f64 = 0.6;
/// Share of add to carts among the steps of a browse session, from intent 0 to intent → ∞.
const CART_SHARE: (f64, f64) = (0.03, 0.16);

/// Interest `age` days after the sign-up.
fn interest(age: f64, decay: f64) -> f64 {
    INTEREST_FLOOR + (1.0 - INTEREST_FLOOR) * (-age / decay).exp()
}

impl ChunkGen<'_> {
    /// The next point after `from` and before `to` of a calendar-modulated Poisson process
    /// with rate `rate * interest(t - signup)` per day; infinite if there is none.
    fn interested_point(&mut self, from: f64, to: f64, rate: f64, signup: f64, decay: f64) -> f64 {
        let mut t = from;
        loop {
            t = self.world.calendar.next_point(&mut self.rng, t, rate);
            if t >= to {
                return f64::INFINITY;
            }
            if self.rng.gen::<f64>() < interest(t - signup, decay) {
                return t;
            }
        }
    }

    /// Simulates campaign customer `local` of the chunk: customers row, truth row, orders,
    /// sessions.
    pub(super) fn campaign_customer(&mut self, local: u32) {
        let world = self.world;
        let days = world.campaign_days;
        // Uniform over the campaign's days, [-days, 0).
        let signup = -days + days * self.rng.gen::<f64>();
        let country = pick(&mut self.rng, &self.country_cdf) as u8;
        let email_null = self.rng.gen::<f64>() < 0.05;
        let opt_in = self.rng.gen::<f64>() < 0.6;
        self.data.customers.push(CustomerRow {
            signup_us: world.to_us(signup).min(world.end_us - 1),
            country,
            email_null,
            opt_in,
        });

        let dormant = self.rng.gen::<f64>() < DORMANT_SHARE;
        let z: f64 = self.rng.sample(StandardNormal);
        let intent = (INTENT_SIGMA * z - 0.5 * INTENT_SIGMA * INTENT_SIGMA).exp()
            * if dormant { DORMANT_FACTOR } else { 1.0 };
        let decay = self.uniform(DECAY_DAYS.0, DECAY_DAYS.1);
        let dropout = signup + self.exp() * LIFETIME_DAYS;
        let repeat_year = self.gamma(REPEAT_RATE.0, REPEAT_RATE.1);
        let aov = self.gamma(AOV.0, AOV.1);
        let return_p = if self.rng.gen::<f64>() < 0.15 {
            self.uniform(0.15, 0.40)
        } else {
            self.uniform(0.0, 0.06)
        };
        let cancel_p = self.uniform(0.005, 0.035);
        let discount_p = Beta::new(2.0, 6.0)
            .expect("valid beta")
            .sample(&mut self.rng);
        let app_p: f64 = Beta::new(2.0, 3.0)
            .expect("valid beta")
            .sample(&mut self.rng);
        let cart_p = CART_SHARE.0 + (CART_SHARE.1 - CART_SHARE.0) * intent / (intent + 1.0);

        // Orders: the first at the engagement hazard, then a Poisson process until dropout.
        self.order_times.clear();
        let stop = dropout.min(FUTURE_DAYS as f64);
        let mut t =
            self.interested_point(signup, stop, FIRST_ORDER_PER_DAY * intent, signup, decay);
        let mut first = true;
        while t < stop {
            let u: f64 = self.rng.gen();
            let status = if u < cancel_p {
                CANCELLED
            } else if u < cancel_p + return_p {
                RETURNED
            } else {
                COMPLETED
            };
            let z: f64 = self.rng.sample(StandardNormal);
            let amount =
                round2((aov * (ORDER_SIGMA * z - 0.5 * ORDER_SIGMA * ORDER_SIGMA).exp()).max(1.0));
            let discount = if first && self.rng.gen::<f64>() < WELCOME_DISCOUNT_P {
                round2(amount * self.uniform(0.10, 0.20))
            } else if self.rng.gen::<f64>() < discount_p {
                round2(amount * self.uniform(0.05, 0.40))
            } else {
                0.0
            };
            let channel = u8::from(self.rng.gen::<f64>() < app_p);
            self.order_times
                .push((world.to_us(t), status, amount, discount, channel));
            first = false;
            t = world
                .calendar
                .next_point(&mut self.rng, t, repeat_year / DAYS_PER_YEAR);
        }
        self.push_orders(local);

        self.data.truth.push(TruthRow {
            ptype: T_CAMPAIGN,
            alive_at_end: dropout > 0.0,
            dropout_us: Some(world.to_us(dropout.min(36_500.0))),
            rate: repeat_year,
        });

        // Browse sessions from the sign-up to the end of the data (or the dropout).
        self.session_times.clear();
        let stop = dropout.min(0.0);
        let mut t = signup;
        loop {
            t = self.interested_point(t, stop, BROWSE_PER_DAY * intent, signup, decay);
            if t.is_infinite() {
                break;
            }
            self.session_times.push(t);
        }
        self.push_sessions(local, signup, Some(cart_p));
    }
}
