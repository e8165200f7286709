//! Ledger keys: which key each message of a listing is recorded under.
//!
//! Responsible for: the UIDL when the server gives a unique, valid one; otherwise a digest of
//! the message's header and size, numbered by occurrence (`sha256:…`, `sha256:…#2`, …) so
//! that byte-identical copies get keys of their own. Copies are assigned undelivered keys
//! first: while the ledger has an undelivered key of the family, no copy is taken for an
//! already delivered one (a misjudged copy costs a duplicate, never a loss), and a key
//! whose DELE a QUIT applied is never reused for a copy still listed. Also the key that
//! remembers a size mismatch of a message without a UID (`size:<octets>`).
//! Must never: give two messages of one listing the same key.

use std::collections::{HashMap, HashSet};

use crate::ledger::Status;

/// Ledger keys by message number: the UIDL, except where the server gives none or lists a
/// UID more than once, now or ever before (`shared`): those are keyed by header digest
/// once downloaded (see [`DigestKeys`]), so a message's key never changes when its twin
/// goes. Also returns the UIDs newly found shared, for the ledger to remember.
pub fn uid_keys(
    listing: &[(u32, u64)],
    uids: Option<Vec<(u32, String)>>,
    shared: &HashSet<String>,
) -> (HashMap<u32, String>, Vec<String>) {
    let Some(uids) = uids else {
        return (HashMap::new(), Vec::new());
    };
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, u) in &uids {
        *count.entry(u.as_str()).or_default() += 1;
    }
    let mut fresh: Vec<String> = count
        .iter()
        .filter(|(u, n)| **n > 1 && !shared.contains(**u))
        .map(|(u, _)| u.to_string())
        .collect();
    fresh.sort();
    let listed: HashSet<u32> = listing.iter().map(|(n, _)| *n).collect();
    let keys = uids
        .iter()
        .filter(|(n, u)| {
            listed.contains(n) && count.get(u.as_str()) == Some(&1) && !shared.contains(u)
        })
        .map(|(n, u)| (*n, u.clone()))
        .collect();
    (keys, fresh)
}

/// How every header-digest key starts.
pub const DIGEST_PREFIX: &str = "sha256:";

/// How every size key ([`size_key`]) starts.
pub const SIZE_PREFIX: &str = "size:";

/// The key a size mismatch of a message without a UID is remembered by: its LIST size,
/// the only thing known of it before it is downloaded.
pub fn size_key(listed: u64) -> String {
    format!("size:{listed}")
}

/// The LIST size a [`size_key`] names.
pub fn size_of_key(key: &str) -> Option<u64> {
    key.strip_prefix("size:")?.parse().ok()
}

/// Assigns digest keys to the copies downloaded in one pass.
#[derive(Debug, Default)]
pub struct DigestKeys {
    used: HashSet<String>,
}

/// The occurrence a key of `digest`'s family stands for (`digest` is 1, `digest#n` is n).
fn occurrence(digest: &str, key: &str) -> Option<u32> {
    if key == digest {
        return Some(1);
    }
    key.strip_prefix(digest)?
        .strip_prefix('#')?
        .parse()
        .ok()
        .filter(|&n| n >= 2)
}

fn key_for(digest: &str, occurrence: u32) -> String {
    if occurrence <= 1 {
        digest.to_string()
    } else {
        format!("{digest}#{occurrence}")
    }
}

impl DigestKeys {
    /// The key for the next copy of `digest` met in this pass, given what the ledger knew
    /// at its start (`known`, and the keys `marked` as possibly submitted): an undelivered
    /// key of the family first (a marked one counts as undelivered: its fate is unknown),
    /// then a delivered one whose deletion no QUIT confirmed, else a new one.
    pub fn assign(
        &mut self,
        digest: &str,
        known: &HashMap<String, Status>,
        marked: &HashSet<String>,
    ) -> String {
        let mut best: Option<(u8, u32)> = None;
        let mut highest = 0;
        let unrecorded = marked
            .iter()
            .filter(|k| !known.contains_key(*k))
            .map(|k| (k, &Status::New));
        for (key, status) in known.iter().chain(unrecorded) {
            let Some(occ) = occurrence(digest, key) else {
                continue;
            };
            highest = highest.max(occ);
            if self.used.contains(key) {
                continue;
            }
            let class = match status {
                Status::Delivered { deleted: true, .. } => continue,
                Status::Delivered { .. } => 1,
                _ => 0,
            };
            if best.is_none_or(|b| (class, occ) < b) {
                best = Some((class, occ));
            }
        }
        for key in &self.used {
            if let Some(occ) = occurrence(digest, key) {
                highest = highest.max(occ);
            }
        }
        let key = match best {
            Some((_, occ)) => key_for(digest, occ),
            None => key_for(digest, highest + 1),
        };
        self.used.insert(key.clone());
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::FailureKind;

    fn delivered(deleted: bool) -> Status {
        Status::Delivered { at: 1, deleted }
    }

    #[test]
    fn duplicate_or_missing_uids_are_left_to_digests() {
        let listing = [(1, 10), (2, 10), (3, 10), (4, 10)];
        let uids = vec![
            (1, "a".into()),
            (2, "b".into()),
            (3, "b".into()),
            (4, "c".into()),
        ];
        let (keys, fresh) = uid_keys(&listing, Some(uids.clone()), &HashSet::new());
        assert_eq!(
            keys,
            HashMap::from([(1, "a".to_string()), (4, "c".to_string())])
        );
        assert_eq!(fresh, ["b"]);
        assert!(uid_keys(&listing, None, &HashSet::new()).0.is_empty());
        // Once shared, always digest-keyed: even alone, "c" stays out.
        let shared = HashSet::from(["c".to_string(), "b".to_string()]);
        let (keys, fresh) = uid_keys(&listing, Some(uids), &shared);
        assert_eq!(keys, HashMap::from([(1, "a".to_string())]));
        assert!(fresh.is_empty());
    }

    #[test]
    fn copies_get_their_own_keys_and_the_same_ones_next_pass() {
        let known = HashMap::new();
        let none = HashSet::new();
        let mut pass = DigestKeys::default();
        assert_eq!(pass.assign("d", &known, &none), "d");
        assert_eq!(pass.assign("d", &known, &none), "d#2");
        assert_eq!(pass.assign("e", &known, &none), "e");
        // Next pass, both delivered and kept on the server: the same keys, so neither is
        // delivered again (leave_on_server).
        let known = HashMap::from([
            ("d".to_string(), delivered(false)),
            ("d#2".to_string(), delivered(false)),
        ]);
        let mut next = DigestKeys::default();
        let mut got = [
            next.assign("d", &known, &none),
            next.assign("d", &known, &none),
        ];
        got.sort();
        assert_eq!(got, ["d", "d#2"]);
        assert_eq!(
            next.assign("d", &known, &none),
            "d#3",
            "a third copy is new"
        );
    }

    #[test]
    fn an_undelivered_key_is_taken_before_a_delivered_one() {
        // d was delivered (its DELE unconfirmed), d#2 failed: one copy listed now. Taking it
        // for d would DELE an undelivered message; taking it for d#2 at worst delivers d
        // twice.
        let known = HashMap::from([
            ("d".to_string(), delivered(false)),
            (
                "d#2".to_string(),
                Status::Failed {
                    failures: 1,
                    last_reply: "451 later".into(),
                    kind: FailureKind::Refused,
                },
            ),
        ]);
        assert_eq!(
            DigestKeys::default().assign("d", &known, &HashSet::new()),
            "d#2"
        );
    }

    #[test]
    fn a_key_whose_dele_was_applied_is_not_reused() {
        let none = HashSet::new();
        let known = HashMap::from([("d".to_string(), delivered(true))]);
        assert_eq!(DigestKeys::default().assign("d", &known, &none), "d#2");
        // Unrelated families and look-alike prefixes are not counted.
        let known = HashMap::from([("dd".to_string(), delivered(false))]);
        assert_eq!(DigestKeys::default().assign("d", &known, &none), "d");
    }

    #[test]
    fn a_copy_whose_submission_was_cut_short_keeps_its_key() {
        // d's final data went out without a reply (marked, never recorded); d#2 was
        // delivered and deleted. The copy still listed is d's: same key, so it is reported
        // as a possible duplicate when sent again.
        let known = HashMap::from([("d#2".to_string(), delivered(true))]);
        let marked = HashSet::from(["d".to_string()]);
        assert_eq!(DigestKeys::default().assign("d", &known, &marked), "d");
    }

    #[test]
    fn size_keys_round_trip() {
        assert_eq!(size_of_key(&size_key(1234)), Some(1234));
        assert_eq!(size_of_key("uid-1"), None);
    }
}
