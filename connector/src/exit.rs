//! The exit codes of `popbridge`: what a pass's summaries (`fetch`, `trigger`) or an
//! administrator's command mean to a script or a monitoring system, as one documented
//! number.
//!
//! Responsible for: the table of codes, how one account's summary maps to a code, and which
//! code wins when accounts disagree. Must never: change the meaning of a published code
//! (new meanings get new numbers), or report success for a summary with a failure.

use crate::pass::{AccountFailure, Summary};

/// The exit codes of `popbridge`. For `fetch` and `trigger`, when accounts differ the most
/// severe wins: `Config` > `Connect` > `Stuck` > `Backlog` > `Delivered`. The other
/// commands use the same numbers with the meanings each variant lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: everything due was delivered; nothing waits. Other commands: done (`check-limits`:
    /// safe; `diagnose`: every check passed).
    Delivered,
    /// 1: something stays on the server that will not go by itself (refused, deferred,
    /// oversize, quarantined, size mismatch) or a pass was interrupted. `check-limits`:
    /// mail can be lost or stuck; `quarantine`: the message is not quarantined or its copy
    /// cannot be read.
    Stuck,
    /// 2: a configuration error (or a state directory or ledger that cannot be used, an
    /// unknown account).
    Config,
    /// 3: could not connect or authenticate (`diagnose`: any check failed).
    Connect,
    /// 4: everything attempted this pass was delivered; a backlog (the per-session cap,
    /// the listing budget) remains for the next pass.
    Backlog,
    /// 5: `check-limits` only: a limit is neither declared nor probed and nothing is proven
    /// unsafe (a pass never ends with it).
    Unknown,
}

/// The table as people read it (for `--help` and the README).
pub const TABLE: &str = "\
Exit codes of fetch and trigger (the most severe account wins: 2 > 3 > 1 > 4 > 0):
  0  everything due was delivered
  1  something stays on the server that will not go by itself (refused, deferred,
     over the size limit, quarantined, size mismatch) or a pass was interrupted
  2  configuration error
  3  could not connect or authenticate
  4  everything attempted was delivered; a backlog (max_messages_per_session, a
     maildrop larger than one pass holds) remains for the next pass";

impl Exit {
    /// The process exit status.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Delivered => 0,
            Exit::Stuck => 1,
            Exit::Config => 2,
            Exit::Connect => 3,
            Exit::Backlog => 4,
            Exit::Unknown => 5,
        }
    }

    /// How severe it is: the higher, the more it needs a person.
    fn severity(self) -> u8 {
        match self {
            Exit::Delivered => 0,
            Exit::Backlog => 1,
            Exit::Unknown => 2,
            Exit::Stuck => 3,
            Exit::Connect => 4,
            Exit::Config => 5,
        }
    }

    /// The more severe of the two.
    pub fn worst(self, other: Exit) -> Exit {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    /// What one account's pass means.
    pub fn of(s: &Summary) -> Exit {
        match &s.failure {
            Some(AccountFailure::Config(_)) => Exit::Config,
            Some(AccountFailure::Connect(_) | AccountFailure::Auth(_)) => Exit::Connect,
            // A broken pass, or one stopped because another instance took its account over:
            // whatever it did not deliver stays on the server.
            Some(AccountFailure::Internal(_) | AccountFailure::LeaseLost(_)) => Exit::Stuck,
            None if s.aborted.is_some() || s.stuck() > 0 => Exit::Stuck,
            None if s.backlog() > 0 => Exit::Backlog,
            None => Exit::Delivered,
        }
    }

    /// What a run over several accounts means: the most severe of them.
    pub fn of_all(summaries: &[Summary]) -> Exit {
        summaries
            .iter()
            .map(Exit::of)
            .fold(Exit::Delivered, Exit::worst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_is_not_stuck_and_the_most_severe_account_wins() {
        let summary = |set: fn(&mut Summary)| {
            let mut s = Summary::default();
            set(&mut s);
            s
        };
        let backlog = summary(|s| (s.postponed, s.capped) = (100, 100));
        assert_eq!(Exit::of(&backlog), Exit::Backlog);
        let sliced = summary(|s| (s.postponed, s.sliced) = (7, 7));
        assert_eq!(Exit::of(&sliced), Exit::Backlog);
        let stuck = summary(|s| (s.rejected, s.postponed, s.capped) = (1, 100, 100));
        assert_eq!(Exit::of(&stuck), Exit::Stuck);
        let interrupted = summary(|s| s.postponed = 3);
        assert_eq!(Exit::of(&interrupted), Exit::Stuck);
        let aborted = summary(|s| s.aborted = Some("lost".into()));
        assert_eq!(Exit::of(&aborted), Exit::Stuck);
        let connect = summary(|s| s.failure = Some(AccountFailure::Connect("refused".into())));
        let config = summary(|s| s.failure = Some(AccountFailure::Config("bad".into())));
        let taken = summary(|s| s.failure = Some(AccountFailure::LeaseLost("fenced".into())));
        assert_eq!(Exit::of(&taken), Exit::Stuck);
        let ok = Summary::default();
        assert_eq!(Exit::of_all(&[]), Exit::Delivered);
        assert_eq!(Exit::of_all(&[ok.clone(), backlog.clone()]), Exit::Backlog);
        assert_eq!(Exit::of_all(&[backlog.clone(), stuck.clone()]), Exit::Stuck);
        assert_eq!(Exit::of_all(&[stuck, connect.clone()]), Exit::Connect);
        assert_eq!(Exit::of_all(&[config, connect, backlog]), Exit::Config);
        let codes: Vec<u8> = [
            Exit::Delivered,
            Exit::Stuck,
            Exit::Config,
            Exit::Connect,
            Exit::Backlog,
            Exit::Unknown,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5]);
    }
}
