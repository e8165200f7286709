//! LIST and UIDL replies read line by line as they arrive, and held compactly: what a
//! session knows of a maildrop of any size.
//!
//! Responsible for: framing a multi-line listing into lines (resumable, each line and the
//! whole reply bounded, *incomplete* kept apart from *invalid*), validating every line as
//! the connector always has, and holding the result in a few flat vectors: LIST sizes by
//! message number ([`Sizes`]), a keyed fingerprint of every UID, and the UIDs themselves
//! for at most a [`Budget`] of messages the caller picks while the reply streams in
//! ([`UidScan`]): a maildrop larger than the budget is worked through in slices, pass
//! after pass.
//! Must never: hold a whole reply, grow past its bounds whatever the server sends, accept a
//! message number listed twice, or let a UID listed more than once pass as unique.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use bytes::BytesMut;
use popbridge_proto::{DotDecoder, DotError, Progress};
use thiserror::Error;

/// Longest listing line accepted, line end included: a UIDL line is at most 83 octets by
/// RFC 1939, a LIST line may carry more after the size; status lines get the same slack.
pub const MAX_LINE: usize = 8 * 1024;
/// Bound on one LIST or UIDL reply, in octets (about 13 million 70-octet UIDs).
pub const MAX_OCTETS: u64 = 1 << 30;
/// Most messages a listing may hold; a server listing more is not believed.
pub const MAX_MESSAGES: usize = 10_000_000;
/// Longest UID (RFC 1939).
pub const MAX_UID: usize = 70;

/// Why a listing could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ListingError {
    /// The reply grew past its bound before its end (the rest of it is still coming).
    #[error("the listing exceeds {limit} octets")]
    TooLarge {
        /// The bound applied.
        limit: u64,
    },
    /// A line is not what the command lists, or the listing as a whole does not make
    /// sense (a message listed twice, too many messages).
    #[error("{0}")]
    Invalid(String),
}

/// Frames a dot-terminated listing into lines as its bytes arrive.
///
/// Lines are handed over without their line end (LF, or CRLF), as `str::lines` would split
/// the whole reply; the terminator ends the reply (`CRLF . CRLF`, or a bare-LF server's
/// `LF . CRLF`).
#[derive(Debug)]
pub struct LineReader {
    dot: DotDecoder,
    chunk: BytesMut,
    partial: Vec<u8>,
    max_line: usize,
}

/// Input decoded per step: bounds the scratch buffer whatever the caller feeds.
const STEP: usize = 64 * 1024;

impl LineReader {
    /// A reader bounded by `limit` octets of unstuffed reply and `max_line` octets a line
    /// (line end included).
    pub fn new(limit: u64, max_line: usize) -> Self {
        Self {
            dot: DotDecoder::new(limit).with_lf_terminator(),
            chunk: BytesMut::new(),
            partial: Vec::new(),
            max_line: max_line.max(2),
        }
    }

    /// Decodes as much of `input` as possible, handing each complete line to `on_line`.
    ///
    /// `Ok` with `done == false` means *incomplete*: feed what follows `consumed` (and more
    /// input) later. Stops right after the terminator; what follows belongs to the next
    /// reply. An error from `on_line` ends the reading as [`ListingError::Invalid`].
    pub fn feed(
        &mut self,
        input: &[u8],
        on_line: &mut impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<Progress, ListingError> {
        let mut consumed = 0;
        loop {
            let end = input.len().min(consumed + STEP);
            let mut chunk = std::mem::take(&mut self.chunk);
            chunk.clear();
            let p = self
                .dot
                .decode(&input[consumed..end], &mut chunk)
                .map_err(|DotError::TooLarge { limit }| ListingError::TooLarge { limit });
            let split = p.as_ref().map_or(Ok(()), |_| self.split(&chunk, on_line));
            self.chunk = chunk;
            let p = p?;
            split?;
            consumed += p.consumed;
            if p.done {
                if !self.partial.is_empty() {
                    // A last line without its line end (cannot follow from the decoder, but
                    // `str::lines` would have given it).
                    let line = std::mem::take(&mut self.partial);
                    on_line(strip_cr(&line)).map_err(ListingError::Invalid)?;
                }
                return Ok(Progress {
                    consumed,
                    done: true,
                });
            }
            if consumed >= input.len() {
                return Ok(Progress {
                    consumed,
                    done: false,
                });
            }
        }
    }

    /// True once the terminator was read.
    pub fn is_done(&self) -> bool {
        self.dot.is_done()
    }

    fn split(
        &mut self,
        mut data: &[u8],
        on_line: &mut impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), ListingError> {
        let too_long =
            |max: usize| ListingError::Invalid(format!("a line longer than {max} octets"));
        while let Some(i) = memchr::memchr(b'\n', data) {
            let (head, rest) = (&data[..i], &data[i + 1..]);
            if self.partial.len() + head.len() + 1 > self.max_line {
                return Err(too_long(self.max_line));
            }
            if self.partial.is_empty() {
                on_line(strip_cr(head)).map_err(ListingError::Invalid)?;
            } else {
                self.partial.extend_from_slice(head);
                let line = std::mem::take(&mut self.partial);
                on_line(strip_cr(&line)).map_err(ListingError::Invalid)?;
                self.partial = line;
                self.partial.clear();
            }
            data = rest;
        }
        // Without its line end, a line this long can no longer fit.
        if self.partial.len() + data.len() >= self.max_line {
            return Err(too_long(self.max_line));
        }
        self.partial.extend_from_slice(data);
        Ok(())
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// How a bad line is quoted in an error: lossy, at most 80 characters.
fn bad_line(line: &str) -> String {
    format!("bad line {:?}", line.chars().take(80).collect::<String>())
}

/// Parses a LIST line (`number size`, anything after the size ignored).
pub fn parse_list_line(line: &[u8]) -> Result<(u32, u64), String> {
    let text = String::from_utf8_lossy(line);
    let mut it = text.split_whitespace();
    let parsed = it
        .next()
        .and_then(|n| n.parse().ok())
        .zip(it.next().and_then(|s| s.parse().ok()));
    parsed.ok_or_else(|| bad_line(&text))
}

/// Parses a UIDL line (`number uid`, the UID 1 to 70 printable ASCII characters, anything
/// after it ignored) and hands it to `f`, whose error is the line's.
pub fn parse_uidl_line<R>(
    line: &[u8],
    f: impl FnOnce(u32, &str) -> Result<R, String>,
) -> Result<R, String> {
    let text = String::from_utf8_lossy(line);
    let mut it = text.split_whitespace();
    let n = it.next().and_then(|n| n.parse().ok());
    let uid = it.next().filter(|u| {
        !u.is_empty() && u.len() <= MAX_UID && u.bytes().all(|b| (0x21..=0x7e).contains(&b))
    });
    match (n, uid) {
        (Some(n), Some(u)) => f(n, u),
        _ => Err(bad_line(&text)),
    }
}

/// A slot of [`Sizes::dense`] for a message not listed.
const ABSENT: u32 = u32::MAX;
/// A slot of [`Sizes::dense`] whose size is in [`Sizes::map`] (too large for a slot).
const IN_MAP: u32 = u32::MAX - 1;
/// Slots a listing may reserve ahead of the messages it has: numbers far beyond the count
/// (a server's gaps, or a hostile `4000000000 1`) go to the map instead.
const DENSE_SLACK: usize = 1024;

/// LIST: every message's size by number, in about 4 octets a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Slot `n - 1` holds message `n`'s size, [`ABSENT`] or [`IN_MAP`].
    dense: Vec<u32>,
    /// Sizes of messages outside the dense range (number 0, far numbers) and sizes too
    /// large for a slot.
    map: BTreeMap<u32, u64>,
    count: usize,
    octets: u64,
}

impl Sizes {
    /// An empty listing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a LIST line into the listing.
    pub fn line(&mut self, line: &[u8]) -> Result<(), String> {
        let (n, size) = parse_list_line(line)?;
        self.insert(n, size)
    }

    /// Adds message `n` of `size` octets; a number listed twice is an error.
    pub fn insert(&mut self, n: u32, size: u64) -> Result<(), String> {
        if self.get(n).is_some() {
            return Err(format!("message {n} listed twice"));
        }
        if self.count >= MAX_MESSAGES {
            return Err(format!("more than {MAX_MESSAGES} messages listed"));
        }
        self.count += 1;
        self.octets = self.octets.saturating_add(size);
        let Some(i) = (n as usize).checked_sub(1) else {
            self.map.insert(n, size);
            return Ok(());
        };
        if i >= self.dense.len() && i < 2 * self.count + DENSE_SLACK {
            let old = self.dense.len();
            self.dense.resize(i + 1, ABSENT);
            // Far numbers listed earlier that the dense range now covers.
            for (&k, _) in self.map.range(old as u32 + 1..=n) {
                self.dense[k as usize - 1] = IN_MAP;
            }
        }
        match self.dense.get_mut(i) {
            Some(slot) if size < u64::from(IN_MAP) => *slot = size as u32,
            Some(slot) => {
                *slot = IN_MAP;
                self.map.insert(n, size);
            }
            None => {
                self.map.insert(n, size);
            }
        }
        Ok(())
    }

    /// Message `n`'s size, if listed.
    pub fn get(&self, n: u32) -> Option<u64> {
        let slot = (n as usize)
            .checked_sub(1)
            .and_then(|i| self.dense.get(i).copied());
        match slot {
            Some(ABSENT) => None,
            Some(IN_MAP) | None => self.map.get(&n).copied(),
            Some(size) => Some(u64::from(size)),
        }
    }

    /// True when message `n` is listed.
    pub fn contains(&self, n: u32) -> bool {
        self.get(n).is_some()
    }

    /// Messages listed.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Their total size in octets.
    pub fn octets(&self) -> u64 {
        self.octets
    }

    /// `(number, size)` of every message, by number.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        let dense_end = self.dense.len() as u32;
        let zero = self.map.range(0..1).map(|(&n, &s)| (n, s));
        let dense = self.dense.iter().enumerate().filter_map(|(i, &slot)| {
            let n = i as u32 + 1;
            match slot {
                ABSENT => None,
                IN_MAP => self.map.get(&n).map(|&s| (n, s)),
                s => Some((n, u64::from(s))),
            }
        });
        let far = self
            .map
            .range(dense_end.saturating_add(1)..)
            .filter(move |(&n, _)| n > dense_end)
            .map(|(&n, &s)| (n, s));
        zero.chain(dense).chain(far)
    }

    /// Octets of heap this listing holds (an estimate for the map).
    pub fn heap_bytes(&self) -> usize {
        self.dense.capacity() * 4 + self.map.len() * 48
    }
}

/// How much of a UIDL listing a session holds: the UIDs of at most `messages` messages
/// that need work; the rest are counted, fingerprinted, and left for later passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Most messages held.
    pub messages: usize,
}

impl Budget {
    /// What a pass holds: at least the largest per-session cap (100,000), about 7 MB of
    /// UIDs at their longest.
    pub const DEFAULT: Self = Self { messages: 100_000 };
    /// Everything (a listing's own bounds still apply).
    pub const ALL: Self = Self {
        messages: usize::MAX,
    };
}

impl Default for Budget {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What the caller wants of a UIDL entry, decided as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Nothing to do for it (done, or not listed): not held.
    Skip,
    /// Work likely to make progress: held while the budget allows, before any [`Want::Later`].
    First,
    /// Work likely to stay (refused before, over the size limit): held only in room
    /// [`Want::First`] entries do not need.
    Later,
}

/// UIDs in one string, with their message numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UidSlice {
    numbers: Vec<u32>,
    ends: Vec<u32>,
    text: String,
}

impl UidSlice {
    fn push(&mut self, n: u32, uid: &str) {
        self.text.push_str(uid);
        self.ends.push(self.text.len() as u32);
        self.numbers.push(n);
    }

    /// Drops the last entry.
    fn pop(&mut self) -> bool {
        if self.numbers.pop().is_none() {
            return false;
        }
        self.ends.pop();
        let end = self.ends.last().copied().unwrap_or(0);
        self.text.truncate(end as usize);
        true
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.numbers.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }

    /// Entry `i`: its message number and UID.
    pub fn get(&self, i: usize) -> (u32, &str) {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        (self.numbers[i], &self.text[start..self.ends[i] as usize])
    }

    fn heap_bytes(&self) -> usize {
        self.numbers.capacity() * 4 + self.ends.capacity() * 4 + self.text.capacity()
    }
}

/// Reads a UIDL listing entry by entry (see [`UidScan::push`]), keeping a fingerprint of
/// every UID and the UIDs the caller's `select` wants, within a [`Budget`].
pub struct UidScan<F> {
    select: F,
    budget: Budget,
    keys: RandomState,
    /// Every entry's UID fingerprint, in listing order.
    fingerprints: Vec<u64>,
    /// Every entry's number, once the listing stopped being 1, 2, 3, … (until then the
    /// number is the position).
    numbers: Option<Vec<u32>>,
    /// One bit an entry, in listing order: the selection wanted it (held or not).
    wanted: Vec<u64>,
    first: UidSlice,
    later: UidSlice,
    not_held: usize,
}

impl<F: FnMut(u32, &str) -> Want> UidScan<F> {
    /// A scan holding what `select` wants, within `budget`.
    pub fn new(budget: Budget, select: F) -> Self {
        Self {
            select,
            budget,
            keys: RandomState::new(),
            fingerprints: Vec::new(),
            numbers: None,
            wanted: Vec::new(),
            first: UidSlice::default(),
            later: UidSlice::default(),
            not_held: 0,
        }
    }

    /// Reads a UIDL line.
    pub fn line(&mut self, line: &[u8]) -> Result<(), String> {
        parse_uidl_line(line, |n, uid| self.push(n, uid))
    }

    /// Takes entry `(n, uid)` of the listing (already validated as a line).
    pub fn push(&mut self, n: u32, uid: &str) -> Result<(), String> {
        let i = self.fingerprints.len();
        if i >= MAX_MESSAGES {
            return Err(format!("more than {MAX_MESSAGES} messages listed"));
        }
        self.fingerprints.push(self.keys.hash_one(uid));
        match &mut self.numbers {
            None if n as usize == i + 1 => {}
            None => {
                let mut v: Vec<u32> = (1..=i as u32).collect();
                v.push(n);
                self.numbers = Some(v);
            }
            Some(v) => v.push(n),
        }
        let want = (self.select)(n, uid);
        if i.is_multiple_of(64) {
            self.wanted.push(0);
        }
        if want != Want::Skip {
            self.wanted[i / 64] |= 1 << (i % 64);
        }
        match want {
            Want::Skip => {}
            Want::First => {
                // Room for it first: the latest `Later` entries give way.
                while !self.fits() && self.later.pop() {
                    self.not_held += 1;
                }
                self.hold(n, uid, true);
            }
            Want::Later => self.hold(n, uid, false),
        }
        Ok(())
    }

    fn fits(&self) -> bool {
        self.first.len() + self.later.len() < self.budget.messages
    }

    fn hold(&mut self, n: u32, uid: &str, first: bool) {
        if !self.fits() {
            self.not_held += 1;
        } else if first {
            self.first.push(n, uid);
        } else {
            self.later.push(n, uid);
        }
    }

    /// The listing as a whole: an error when a message number was listed twice.
    pub fn finish(self) -> Result<UidListing, String> {
        let entries = self.fingerprints.len();
        let number_at = |i: usize| match &self.numbers {
            None => i as u32 + 1,
            Some(v) => v[i],
        };
        // UIDs listed more than once: equal UIDs have equal fingerprints; distinct ones
        // sharing a fingerprint (about one chance in 10^8 for a million UIDs, and keyed
        // per process, so a server cannot aim for it) only cost them their UID keys.
        let mut sorted = self.fingerprints.clone();
        sorted.sort_unstable();
        let repeated: HashSet<u64> = sorted
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        drop(sorted);
        let mut shared: Vec<(u32, bool)> = if repeated.is_empty() {
            Vec::new()
        } else {
            self.fingerprints
                .iter()
                .enumerate()
                .filter(|(_, f)| repeated.contains(f))
                .map(|(i, _)| (number_at(i), self.wanted[i / 64] & (1 << (i % 64)) != 0))
                .collect()
        };
        shared.sort_unstable();
        let (shared, shared_wanted) = shared.into_iter().unzip();
        let numbers = match self.numbers {
            None => Numbers::Upto(entries as u32),
            Some(mut v) => {
                v.sort_unstable();
                if let Some(w) = v.windows(2).find(|w| w[0] == w[1]) {
                    return Err(format!("message {} listed twice", w[0]));
                }
                Numbers::Sorted(v)
            }
        };
        let (first, later) = (self.first, self.later);
        let mut order: Vec<u32> = (0..first.len() as u32)
            .chain((0..later.len() as u32).map(|i| i | LATER))
            .collect();
        let number_of = |o: u32| -> u32 {
            if o & LATER == 0 {
                first.numbers[o as usize]
            } else {
                later.numbers[(o & !LATER) as usize]
            }
        };
        order.sort_by_key(|&o| number_of(o));
        Ok(UidListing {
            first,
            later,
            order,
            shared,
            shared_wanted,
            numbers,
            not_held: self.not_held,
            entries,
        })
    }
}

/// Marks an index of [`UidListing::order`] as one into `later`.
const LATER: u32 = 1 << 31;

/// Which message numbers a UIDL listing had.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Numbers {
    /// 1 to n, in order.
    Upto(u32),
    /// Any other set, sorted.
    Sorted(Vec<u32>),
}

/// A UIDL listing as held: the UIDs of the entries selected (by number), which numbers
/// carry a UID listed more than once, and how many wanted entries were not held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidListing {
    first: UidSlice,
    later: UidSlice,
    /// Held entries by number: indices into `first`, or into `later` with [`LATER`] set.
    order: Vec<u32>,
    /// Numbers whose UID is listed more than once (sorted).
    shared: Vec<u32>,
    /// For each of `shared`: the selection wanted it (so `not_held` counts it if it was
    /// not held).
    shared_wanted: Vec<bool>,
    numbers: Numbers,
    not_held: usize,
    entries: usize,
}

impl UidListing {
    /// Entries listed.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// True when the listing was empty.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Entries held.
    pub fn held_len(&self) -> usize {
        self.order.len()
    }

    /// The held entries `(number, uid)`, by number.
    pub fn held(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        self.order.iter().map(|&o| {
            if o & LATER == 0 {
                self.first.get(o as usize)
            } else {
                self.later.get((o & !LATER) as usize)
            }
        })
    }

    /// True when message `n` is held.
    pub fn is_held(&self, n: u32) -> bool {
        self.order
            .binary_search_by_key(&n, |&o| {
                if o & LATER == 0 {
                    self.first.numbers[o as usize]
                } else {
                    self.later.numbers[(o & !LATER) as usize]
                }
            })
            .is_ok()
    }

    /// Numbers whose UID is listed more than once, sorted: none of them has a usable UID.
    pub fn shared(&self) -> &[u32] {
        &self.shared
    }

    /// `shared`, each with whether the selection wanted it (then, when not held, it is
    /// among [`UidListing::not_held`]).
    pub fn shared_entries(&self) -> impl Iterator<Item = (u32, bool)> + '_ {
        self.shared
            .iter()
            .copied()
            .zip(self.shared_wanted.iter().copied())
    }

    /// True when message `n`'s UID is listed more than once.
    pub fn is_shared(&self, n: u32) -> bool {
        self.shared.binary_search(&n).is_ok()
    }

    /// True when the listing has an entry for message `n`.
    pub fn has_uid(&self, n: u32) -> bool {
        match &self.numbers {
            Numbers::Upto(m) => (1..=*m).contains(&n),
            Numbers::Sorted(v) => v.binary_search(&n).is_ok(),
        }
    }

    /// Entries the selection wanted that did not fit the budget.
    pub fn not_held(&self) -> usize {
        self.not_held
    }

    /// Octets of heap this listing holds.
    pub fn heap_bytes(&self) -> usize {
        let numbers = match &self.numbers {
            Numbers::Upto(_) => 0,
            Numbers::Sorted(v) => v.capacity() * 4,
        };
        self.first.heap_bytes()
            + self.later.heap_bytes()
            + self.order.capacity() * 4
            + self.shared.capacity() * 4
            + self.shared_wanted.capacity()
            + numbers
    }
}

impl<F> UidScan<F> {
    /// Octets of heap the scan holds so far.
    pub fn heap_bytes(&self) -> usize {
        self.fingerprints.capacity() * 8
            + self.wanted.capacity() * 8
            + self.numbers.as_ref().map_or(0, |v| v.capacity() * 4)
            + self.first.heap_bytes()
            + self.later.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in the given parts; returns the lines, whether the reply ended, and
    /// the octets consumed.
    fn read(parts: &[&[u8]], max_line: usize) -> Result<(Vec<Vec<u8>>, bool, usize), ListingError> {
        let mut r = LineReader::new(1 << 20, max_line);
        let mut lines = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut total = 0;
        for part in parts {
            buf.extend_from_slice(part);
            let p = r.feed(&buf, &mut |l: &[u8]| {
                lines.push(l.to_vec());
                Ok(())
            })?;
            buf.drain(..p.consumed);
            total += p.consumed;
            if p.done {
                return Ok((lines, true, total));
            }
        }
        Ok((lines, false, total))
    }

    #[test]
    fn lines_come_out_whatever_the_split() {
        let input = b"1 100\r\n2 200\n..3 x\r\n\r\n4 5 extra\r\n.\r\n+OK next";
        let (whole, done, used) = read(&[input], 64).unwrap();
        assert!(done);
        assert_eq!(
            &input[used..],
            b"+OK next",
            "stops right after the terminator"
        );
        let expected: Vec<Vec<u8>> = ["1 100", "2 200", ".3 x", "", "4 5 extra"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(whole, expected);
        for split in 0..=input.len() {
            let got = read(&[&input[..split], &input[split..]], 64).unwrap();
            assert_eq!(got, (whole.clone(), true, used), "split at {split}");
        }
        // Every byte on its own.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(read(&bytes, 64).unwrap(), (whole, true, used));
    }

    #[test]
    fn incomplete_is_not_invalid() {
        let input = b"1 100\r\n2 200\r\n.\r\n";
        for cut in 0..input.len() {
            let (_, done, _) = read(&[&input[..cut]], 64).unwrap();
            assert!(!done, "cut at {cut}: not ended, and no error");
        }
        // A bare-LF server's end.
        let (lines, done, _) = read(&[b"1 1\n2 2\n.\r\n"], 64).unwrap();
        assert!(done);
        assert_eq!(lines.len(), 2);
        // `LF . LF` is not an end: the dot line is data.
        let (lines, done, _) = read(&[b"1 1\n.\n2 2\r\n"], 64).unwrap();
        assert!(!done);
        assert_eq!(lines, [b"1 1".to_vec(), b".".to_vec(), b"2 2".to_vec()]);
    }

    #[test]
    fn a_line_over_the_bound_is_invalid_as_soon_as_it_cannot_fit() {
        let mut r = LineReader::new(1 << 20, 16);
        let mut none = |_: &[u8]| Ok(());
        // 15 octets and CRLF would be 17: refused once 16 octets without an end arrived.
        let p = r.feed(b"123456789012345", &mut none).unwrap();
        assert!(!p.done);
        assert!(matches!(
            r.feed(b"6", &mut none),
            Err(ListingError::Invalid(d)) if d.contains("longer than 16")
        ));
        // At the bound it passes.
        let (lines, done, _) = read(&[b"12345678901234\r\n.\r\n"], 16).unwrap();
        assert!(done && lines.len() == 1);
        // Split at every byte, the same verdict.
        let input = b"1 1\r\n12345678901234567890\r\n.\r\n";
        for split in 0..=input.len() {
            assert!(
                read(&[&input[..split], &input[split..]], 16).is_err(),
                "split at {split}"
            );
        }
    }

    #[test]
    fn the_whole_reply_is_bounded() {
        let mut r = LineReader::new(10, 64);
        let err = r
            .feed(b"1 1\r\n2 2\r\n3 3\r\n.\r\n", &mut |_: &[u8]| Ok(()))
            .unwrap_err();
        assert_eq!(err, ListingError::TooLarge { limit: 10 });
    }

    #[test]
    fn a_callback_error_is_the_lines_and_stops_reading() {
        let mut r = LineReader::new(1 << 20, 64);
        let mut seen = 0;
        let err = r
            .feed(b"1 1\r\nbad\r\n3 3\r\n.\r\n", &mut |l: &[u8]| {
                seen += 1;
                parse_list_line(l).map(|_| ())
            })
            .unwrap_err();
        assert_eq!(err, ListingError::Invalid("bad line \"bad\"".into()));
        assert_eq!(seen, 2, "nothing after the bad line");
    }

    #[test]
    fn list_lines_are_validated_as_before() {
        assert_eq!(parse_list_line(b"1 100"), Ok((1, 100)));
        assert_eq!(parse_list_line(b" 7\t200 more info"), Ok((7, 200)));
        assert_eq!(parse_list_line(b"1 100\r"), Ok((1, 100)));
        for bad in [&b""[..], b"1", b"x 1", b"1 -5", b"1 x", b"4294967296 1"] {
            assert!(parse_list_line(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_list_line(b"oops").unwrap_err(), "bad line \"oops\"");
    }

    #[test]
    fn uidl_lines_are_validated_as_before() {
        let ok = |l: &[u8]| parse_uidl_line(l, |n, u| Ok((n, u.to_string())));
        assert_eq!(ok(b"1 abc"), Ok((1, "abc".into())));
        assert_eq!(ok(b"2 abc extra"), Ok((2, "abc".into())));
        let long = format!("3 {}", "u".repeat(70));
        assert_eq!(ok(long.as_bytes()).unwrap().1.len(), 70);
        let too_long = format!("3 {}", "u".repeat(71));
        assert!(ok(too_long.as_bytes()).is_err());
        for bad in [&b""[..], b"1", b"x abc", b"1 \xff\xfe", b"1 ab\x7fc"] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_by_number_with_gaps_far_numbers_and_huge_sizes() {
        let mut s = Sizes::new();
        for (n, size) in [
            (2, 20),
            (1, 10),
            (5, 50),
            (0, 7),
            (4_000_000_000, 1),
            (3, 1 << 40),
        ] {
            s.insert(n, size).unwrap();
        }
        assert_eq!(s.len(), 6);
        assert_eq!(s.get(4), None);
        assert_eq!(s.get(3), Some(1 << 40));
        assert_eq!(s.get(0), Some(7));
        assert_eq!(s.get(4_000_000_000), Some(1));
        assert!(
            s.heap_bytes() < 64 * 1024,
            "no room reserved for a far number"
        );
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [
                (0, 7),
                (1, 10),
                (2, 20),
                (3, 1 << 40),
                (5, 50),
                (4_000_000_000, 1)
            ]
        );
        assert_eq!(s.octets(), 10 + 20 + 50 + 7 + 1 + (1 << 40));
        assert_eq!(s.insert(5, 1).unwrap_err(), "message 5 listed twice");
        assert_eq!(s.insert(0, 1).unwrap_err(), "message 0 listed twice");
        // A far number the dense range grows over stays found, once.
        let mut s = Sizes::new();
        s.insert(1500, 3).unwrap();
        for n in 1..1500 {
            s.insert(n, 1).unwrap();
        }
        assert_eq!(s.get(1500), Some(3), "beyond the dense range");
        s.insert(1501, 4).unwrap();
        assert_eq!((s.get(1500), s.get(1501)), (Some(3), Some(4)));
        assert_eq!(s.iter().count(), 1501);
        assert_eq!(s.iter().filter(|&(n, _)| n == 1500).count(), 1);
        assert!(s.insert(1500, 3).is_err());
    }

    fn scan_all(
        lines: &[&str],
        budget: usize,
        select: impl FnMut(u32, &str) -> Want,
    ) -> Result<UidListing, String> {
        let mut scan = UidScan::new(Budget { messages: budget }, select);
        for l in lines {
            scan.line(l.as_bytes())?;
        }
        scan.finish()
    }

    #[test]
    fn a_scan_holds_the_first_wanted_entries_and_counts_the_rest() {
        let lines: Vec<String> = (1..=10).map(|n| format!("{n} uid-{n}")).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        // Even numbers are done: they never use the budget.
        let l = scan_all(
            &lines,
            3,
            |n, _| if n % 2 == 0 { Want::Skip } else { Want::First },
        )
        .unwrap();
        let held: Vec<(u32, String)> = l.held().map(|(n, u)| (n, u.to_string())).collect();
        assert_eq!(
            held,
            [
                (1, "uid-1".into()),
                (3, "uid-3".into()),
                (5, "uid-5".into())
            ]
        );
        assert_eq!((l.len(), l.not_held()), (10, 2));
        assert!(l.is_held(3) && !l.is_held(7) && !l.is_held(2));
        assert!(l.shared().is_empty());
        assert!(l.has_uid(10) && !l.has_uid(11) && !l.has_uid(0));
    }

    #[test]
    fn later_entries_give_way_to_first_ones() {
        let lines = ["1 a", "2 b", "3 c", "4 d", "5 e"];
        // 1 and 2 are likely to stay; 3 to 5 make progress.
        let l = scan_all(
            &lines,
            3,
            |n, _| if n <= 2 { Want::Later } else { Want::First },
        )
        .unwrap();
        let held: Vec<u32> = l.held().map(|(n, _)| n).collect();
        assert_eq!(held, [3, 4, 5]);
        assert_eq!(l.not_held(), 2);
        let l = scan_all(
            &lines,
            4,
            |n, _| if n <= 2 { Want::Later } else { Want::First },
        )
        .unwrap();
        let held: Vec<u32> = l.held().map(|(n, _)| n).collect();
        assert_eq!(held, [1, 3, 4, 5], "the earliest Later entry stays");
    }

    #[test]
    fn a_uid_listed_twice_is_found_whether_held_or_not() {
        // "x" at 2 and 5: 2 is held, 5 is beyond the budget; "y" at 3 and 4, both skipped.
        let lines = ["1 a", "2 x", "3 y", "4 y", "5 x", "6 b"];
        let l = scan_all(&lines, 2, |n, _| {
            if n == 3 || n == 4 {
                Want::Skip
            } else {
                Want::First
            }
        })
        .unwrap();
        assert_eq!(l.shared(), [2, 3, 4, 5]);
        let wanted: Vec<(u32, bool)> = l.shared_entries().collect();
        assert_eq!(wanted, [(2, true), (3, false), (4, false), (5, true)]);
        assert!(l.is_shared(2) && l.is_shared(5) && !l.is_shared(1) && !l.is_shared(6));
    }

    #[test]
    fn out_of_order_numbers_are_kept_and_a_number_listed_twice_is_refused() {
        let l = scan_all(&["3 c", "1 a", "2 b", "7 g"], 10, |_, _| Want::First).unwrap();
        let held: Vec<u32> = l.held().map(|(n, _)| n).collect();
        assert_eq!(held, [1, 2, 3, 7]);
        assert!(l.has_uid(7) && !l.has_uid(4));
        assert_eq!(
            scan_all(&["1 a", "2 b", "1 c"], 10, |_, _| Want::First).unwrap_err(),
            "message 1 listed twice"
        );
        assert_eq!(
            scan_all(&["1 a", "bad"], 10, |_, _| Want::First).unwrap_err(),
            "bad line \"bad\""
        );
    }

    /// Held entries, shared numbers, and whether the reply ended.
    type Parsed = (Vec<(u32, String)>, Vec<u32>, bool);

    #[test]
    fn a_uidl_reply_split_at_every_byte_gives_the_same_listing() {
        let input = b"1 aaa\r\n2 bbb\r\n3 aaa\r\n4 ccc\r\n.\r\n";
        let parse = |parts: &[&[u8]]| -> Result<Parsed, ListingError> {
            let mut r = LineReader::new(1 << 20, 64);
            let mut scan = UidScan::new(Budget { messages: 2 }, |_, _| Want::First);
            let mut buf = Vec::new();
            let mut done = false;
            for part in parts {
                buf.extend_from_slice(part);
                let p = r.feed(&buf, &mut |l: &[u8]| scan.line(l))?;
                buf.drain(..p.consumed);
                done = p.done;
            }
            let l = scan.finish().map_err(ListingError::Invalid)?;
            let held = l.held().map(|(n, u)| (n, u.to_string())).collect();
            Ok((held, l.shared().to_vec(), done))
        };
        let whole = parse(&[input]).unwrap();
        assert_eq!(
            whole,
            (vec![(1, "aaa".into()), (2, "bbb".into())], vec![1, 3], true)
        );
        for split in 0..=input.len() {
            assert_eq!(
                parse(&[&input[..split], &input[split..]]).unwrap(),
                whole,
                "split at {split}"
            );
        }
    }
}
