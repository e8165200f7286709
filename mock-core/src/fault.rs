//! Scripted, seedable faults: which reply to tamper with, and how.
//!
//! Shared by both mocks, so scenario files describe POP3 and SMTP faults the same way:
//! one [`Hook`] enum holds both protocols' hooks (the greeting, commands by keyword and
//! any command are common; [`Hook::EndOfData`] only fires in the SMTP mock, a POP3 rule
//! on it never matches). Must never draw from the generator for an event that no rule
//! matches: a seed must replay the same faults for the same traffic.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Where a fault applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// The greeting sent on connect (after the TLS handshake for implicit TLS).
    Greeting,
    /// The reply to a command, by keyword (`RETR`, `PASS`, `MAIL`, ...); case-insensitive.
    Command(String),
    /// The reply to any command: `nth` counts every command line of the server.
    AnyCommand,
    /// SMTP only: the final reply to a message's data (the end of DATA or the last
    /// BDAT); `nth` counts messages.
    EndOfData,
}

impl Hook {
    /// The hook for a command keyword.
    pub fn command(keyword: &str) -> Self {
        Self::Command(keyword.to_ascii_uppercase())
    }
}

/// What happens to the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Send this line (CRLF added) instead of the normal reply; the command has no effect.
    Reply(String),
    /// Send this line instead of the normal reply, then close (an SMTP `421`).
    ReplyAndClose(String),
    /// Close the connection without replying (and without performing the command).
    CloseBeforeReply,
    /// Send only the first `n` octets of the reply, then close.
    CloseAfterBytes(usize),
    /// Wait this long, then reply normally.
    Delay(Duration),
    /// Send this line (CRLF added) before the normal reply.
    GarbageLine(Vec<u8>),
    /// Perform the command, then close without sending its reply: the command took
    /// effect (a QUIT applied its deletions, SMTP took the message) and the client cannot
    /// know. On a command that goes on reading from the client (DATA, BDAT, AUTH, STLS,
    /// STARTTLS) it closes before the reply instead.
    LoseReply,
}

/// A fault: on the `nth` matching event (1-based, counted over the whole server) and the
/// `times - 1` after it, perform `action`, each time with `probability` if set (drawn from the
/// server's seeded generator, so a seed replays the same run).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// Where it applies.
    pub on: Hook,
    /// The first matching event that fires (1-based).
    pub nth: u32,
    /// How many times it fires; `None` for every later event.
    pub times: Option<u32>,
    /// Chance of firing on an eligible event; `None` means always.
    pub probability: Option<f64>,
    /// What it does.
    pub action: FaultAction,
}

impl FaultRule {
    /// A rule firing once, on the first matching event.
    pub fn new(on: Hook, action: FaultAction) -> Self {
        Self {
            on,
            nth: 1,
            times: Some(1),
            probability: None,
            action,
        }
    }

    /// Fires first on the `nth` event (1-based).
    pub fn nth(mut self, nth: u32) -> Self {
        self.nth = nth.max(1);
        self
    }

    /// Fires `times` times in all.
    pub fn times(mut self, times: u32) -> Self {
        self.times = Some(times);
        self
    }

    /// Fires on every eligible event from the `nth` on.
    pub fn always(mut self) -> Self {
        self.times = None;
        self
    }

    /// Fires on each eligible event with this chance.
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = Some(p.clamp(0.0, 1.0));
        self
    }
}

/// A rule with its counters (server-wide).
#[derive(Debug)]
struct ArmedRule {
    rule: FaultRule,
    seen: u32,
    fired: u32,
}

/// A server's fault rules with their counters and its seeded generator.
#[derive(Debug)]
pub struct FaultPlan {
    rules: Mutex<Vec<ArmedRule>>,
    rng: Mutex<ChaCha8Rng>,
    armed: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultPlan {
    /// A plan from rules and a seed.
    pub fn new(rules: impl IntoIterator<Item = FaultRule>, seed: u64) -> Self {
        Self {
            rules: Mutex::new(
                rules
                    .into_iter()
                    .map(|rule| ArmedRule {
                        rule,
                        seen: 0,
                        fired: 0,
                    })
                    .collect(),
            ),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            armed: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Turns every rule off (`false`) or back on; while off, events are neither counted
    /// nor drawn for, so turning them on again resumes where they stood.
    pub fn set_armed(&self, on: bool) {
        self.armed.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// The seeded generator (also for timestamps and challenges, so a seed replays them).
    pub fn rng(&self) -> MutexGuard<'_, ChaCha8Rng> {
        lock(&self.rng)
    }

    /// Counts one event on every rule matching any of `hooks`; returns the action of the
    /// first rule that fires.
    pub fn take(&self, hooks: &[Hook]) -> Option<FaultAction> {
        if !self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let mut rules = lock(&self.rules);
        let mut chosen = None;
        for armed in rules.iter_mut().filter(|a| hooks.contains(&a.rule.on)) {
            armed.seen += 1;
            let eligible =
                armed.seen >= armed.rule.nth && armed.rule.times.is_none_or(|t| armed.fired < t);
            if !eligible || chosen.is_some() {
                continue;
            }
            let fires = match armed.rule.probability {
                Some(p) => self.rng().gen_bool(p),
                None => true,
            };
            if fires {
                armed.fired += 1;
                chosen = Some(armed.rule.action.clone());
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_and_times_count_matching_events_only() {
        let plan = FaultPlan::new(
            [
                FaultRule::new(Hook::command("RETR"), FaultAction::CloseBeforeReply)
                    .nth(2)
                    .times(2),
            ],
            0,
        );
        let retr = [Hook::command("retr"), Hook::AnyCommand];
        let fired: Vec<bool> = (0..5)
            .map(|_| {
                assert!(plan.take(&[Hook::command("DELE")]).is_none());
                plan.take(&retr).is_some()
            })
            .collect();
        assert_eq!(fired, [false, true, true, false, false]);
    }

    #[test]
    fn a_disarmed_plan_fires_nothing_and_counts_nothing() {
        let plan = FaultPlan::new(
            [FaultRule::new(Hook::command("RETR"), FaultAction::CloseBeforeReply).nth(2)],
            0,
        );
        let retr = [Hook::command("RETR")];
        assert!(plan.take(&retr).is_none());
        plan.set_armed(false);
        assert!(plan.take(&retr).is_none(), "would have been the 2nd");
        plan.set_armed(true);
        assert!(plan.take(&retr).is_some(), "the 2nd counted event");
    }

    #[test]
    fn any_command_counts_every_command() {
        let plan = FaultPlan::new(
            [FaultRule::new(Hook::AnyCommand, FaultAction::CloseBeforeReply).nth(3)],
            0,
        );
        assert!(plan.take(&[Hook::command("A"), Hook::AnyCommand]).is_none());
        assert!(plan.take(&[Hook::command("B"), Hook::AnyCommand]).is_none());
        assert!(plan.take(&[Hook::command("C"), Hook::AnyCommand]).is_some());
    }
}
