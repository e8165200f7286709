//! Shrinking a failing chaos world to a small reproducer.
//!
//! Responsible for: taking out crashes, kills, faults and messages, one piece (or half of
//! the messages) at a time, keeping each cut that still fails, until no cut does or the
//! budget of re-runs is spent. "Still fails" means the oracle still finds a violation of
//! the same kind the original run had.
//! Must never: run without a bound, or change what is left of the world (labels, sizes and
//! settings stay as drawn, so the reproducer reads like the original).

use super::oracle::{Kind, Verdict};
use super::run_spec;
use super::spec::Spec;
use crate::external::Connector;

/// The most re-runs one shrink may use.
const BUDGET: u32 = 120;

/// The kinds of violation that make `v` a failure.
fn kinds(v: &Verdict) -> Vec<Kind> {
    let mut k: Vec<Kind> = v
        .violations
        .iter()
        .filter(|x| !x.expected)
        .map(|x| x.kind)
        .collect();
    k.sort();
    k.dedup();
    k
}

/// A smaller world that still fails like `failed` did.
pub async fn shrink(spec: &Spec, connector: &Connector, failed: &Verdict) -> Spec {
    let wanted = kinds(failed);
    let mut best = spec.clone();
    let mut runs = 0u32;
    let still_fails = |v: &Verdict| kinds(v).iter().any(|k| wanted.contains(k));
    loop {
        let mut progressed = false;
        // Halves, quarters ... of the messages, then single pieces of everything.
        let mut candidates: Vec<Spec> = Vec::new();
        let n = best.messages.len();
        let mut chunk = n / 2;
        while chunk >= 1 {
            let mut start = 0;
            while start < n {
                let mut c = best.clone();
                let end = (start + chunk).min(n);
                if end - start < n {
                    c.messages.drain(start..end);
                    candidates.push(c);
                }
                start = end;
            }
            if chunk == 1 {
                break;
            }
            chunk /= 2;
        }
        for i in 0..best.crashes.len() {
            let mut c = best.clone();
            c.crashes.remove(i);
            candidates.push(c);
        }
        for i in 0..best.kills.len() {
            let mut c = best.clone();
            c.kills.remove(i);
            candidates.push(c);
        }
        for i in 0..best.faults.len() {
            let mut c = best.clone();
            c.faults.remove(i);
            candidates.push(c);
        }
        for c in candidates {
            if runs >= BUDGET {
                return best;
            }
            runs += 1;
            let (v, _) = run_spec(&c, connector).await;
            if still_fails(&v) {
                best = c;
                progressed = true;
                break;
            }
        }
        if !progressed {
            return best;
        }
    }
}
