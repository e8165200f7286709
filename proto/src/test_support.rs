//! Checks that the unit tests of both protocols' command modules share.
//!
//! Responsible for: the round trip every command type promises (its `Display` is the
//! exact wire line, and `parse` of that line gives the command back).
//! Must never: be compiled outside `cargo test`.

use std::fmt::{Debug, Display};

/// Asserts, for each `(command, wire)` case, that the command writes exactly `wire` and
/// that `parse(wire)` reads the same command back.
pub(crate) fn assert_wire_round_trips<C, E>(
    cases: Vec<(C, &str)>,
    parse: impl Fn(&[u8]) -> Result<C, E>,
) where
    C: Display + Debug + PartialEq,
    E: Debug,
{
    for (cmd, wire) in cases {
        assert_eq!(cmd.to_string(), wire);
        assert_eq!(parse(wire.as_bytes()).unwrap(), cmd, "{wire:?}");
    }
}
