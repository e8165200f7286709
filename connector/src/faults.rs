//! Fault injection for harnesses: simulated crashes at every step of a message, and
//! deliberately broken behaviours that prove a checker catches what it exists to catch.
//!
//! Responsible for: naming the points where the pass engine can be made to stop like a
//! killed process (no DELE, no QUIT, nothing more written), and the sabotages. Nothing here
//! is reachable from popbridge's configuration file or command line: only a harness
//! calling the library (`poplab`) sets them.
//! Must never: be set by default, or change behaviour when unset.

use std::fmt;
use std::str::FromStr;

/// A step of a message's way through a pass, where a simulated crash can happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// The message was downloaded; nothing was submitted.
    AfterRetr,
    /// The SMTP server answered 2xx to the end of its data; the ledger has not recorded it.
    AfterAccept,
    /// The ledger recorded the delivery; no DELE was sent.
    AfterRecord,
    /// The server answered `+OK` to a DELE; no QUIT was sent.
    AfterDele,
    /// QUIT was sent; its reply was never read (the server may have applied the DELEs).
    DuringQuit,
}

impl Step {
    /// Every step, in the order a message meets them.
    pub const ALL: [Step; 5] = [
        Step::AfterRetr,
        Step::AfterAccept,
        Step::AfterRecord,
        Step::AfterDele,
        Step::DuringQuit,
    ];

    /// The name scenario files use (`after-accept`).
    pub fn name(self) -> &'static str {
        match self {
            Self::AfterRetr => "after-retr",
            Self::AfterAccept => "after-accept",
            Self::AfterRecord => "after-record",
            Self::AfterDele => "after-dele",
            Self::DuringQuit => "during-quit",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Step {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        by_name(&Self::ALL, Self::name, s, "step")
    }
}

/// The member of `all` called `s`, or an error listing the names.
fn by_name<T: Copy>(
    all: &[T],
    name: fn(T) -> &'static str,
    s: &str,
    what: &str,
) -> Result<T, String> {
    all.iter().copied().find(|x| name(*x) == s).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|x| name(*x)).collect();
        format!("unknown {what} {s:?}; one of {}", names.join(", "))
    })
}

/// Where a simulated crash happens: the `nth` time (from 1) a message reaches `step` in a
/// pass of an account (for `DuringQuit`, at the pass's QUIT; `nth` is not used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FailPoint {
    /// The step.
    pub step: Step,
    /// Which occurrence of it.
    pub nth: u32,
}

/// A deliberately broken behaviour, to show that a checker (poplab's chaos oracle) catches
/// what it exists to catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sabotage {
    /// DELE every message as soon as it is downloaded, before it is submitted and
    /// recorded: loses mail whenever a submission fails.
    DeleBeforeLedger,
    /// Ignore the ledger's record of earlier deliveries: submits again what was delivered
    /// before (duplicates after any session that ended before its QUIT).
    SkipLedgerCheck,
}

impl Sabotage {
    /// Every sabotage.
    pub const ALL: [Sabotage; 2] = [Sabotage::DeleBeforeLedger, Sabotage::SkipLedgerCheck];

    /// Its name on poplab's command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::DeleBeforeLedger => "dele-before-ledger",
            Self::SkipLedgerCheck => "skip-ledger-check",
        }
    }
}

impl FromStr for Sabotage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        by_name(&Self::ALL, Self::name, s, "sabotage")
    }
}

/// The faults a harness injects into a pass (none by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// A simulated crash.
    pub crash: Option<FailPoint>,
    /// A deliberately broken behaviour.
    pub sabotage: Option<Sabotage>,
}

impl Faults {
    /// No faults: the connector as shipped.
    pub const NONE: Faults = Faults {
        crash: None,
        sabotage: None,
    };

    /// A crash the `nth` time a message reaches `step`. A test hook (feature
    /// `test-hooks`); harnesses set the `crash` field.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn crash(step: Step, nth: u32) -> Self {
        Self {
            crash: Some(FailPoint { step, nth }),
            sabotage: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_choices() {
        for s in Step::ALL {
            assert_eq!(s.name().parse::<Step>(), Ok(s));
        }
        for s in Sabotage::ALL {
            assert_eq!(s.name().parse::<Sabotage>(), Ok(s));
        }
        let e = "after-lunch".parse::<Step>().unwrap_err();
        assert!(e.contains("after-accept"), "{e}");
    }
}
