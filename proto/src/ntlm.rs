//! NTLM (MS-NLMP) messages for SPA login, NTLMv2 only: the client's NEGOTIATE (type 1)
//! and AUTHENTICATE (type 3) messages, the server's CHALLENGE (type 2) with its target
//! information (AV pairs), and the server-side check of an NTLMv2 response.
//!
//! Responsible for: the exact octets of each message in both directions, parsing every
//! offset and length against the message it points into (a hostile peer gets a typed
//! [`NtlmError`], never a panic or an out-of-range read), NTOWFv2, the NTLMv2 and LMv2
//! responses, and comparing a proof in constant time.
//!
//! Must never: do I/O (the caller supplies the random client challenge and the time),
//! speak NTLMv1 or LM (a 24-octet NT response is refused), or put a password, an NT
//! hash or an AUTHENTICATE message into `Debug` output or an error message.
//!
//! The exchange, client side: [`negotiate`] → the server's bytes through
//! [`Challenge::parse`] → [`authenticate`]. Server side: [`Negotiate::parse`] →
//! [`Challenge::to_bytes`] → [`Authenticate::parse`] → [`Authenticate::verify`].

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use md4::{Digest, Md4};
use md5::Md5;
use thiserror::Error;

type HmacMd5 = Hmac<Md5>;

/// The eight octets every NTLM message starts with.
pub const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

/// NEGOTIATE_MESSAGE.
const TYPE_NEGOTIATE: u32 = 1;
/// CHALLENGE_MESSAGE.
const TYPE_CHALLENGE: u32 = 2;
/// AUTHENTICATE_MESSAGE.
const TYPE_AUTHENTICATE: u32 = 3;

/// Negotiate flags (MS-NLMP 2.2.2.5) this module reads or sets.
pub mod flags {
    /// Text fields are UTF-16LE.
    pub const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
    /// Text fields are in the OEM character set.
    pub const NEGOTIATE_OEM: u32 = 0x0000_0002;
    /// The server should send its target name.
    pub const REQUEST_TARGET: u32 = 0x0000_0004;
    /// NTLM authentication (as opposed to LM only).
    pub const NEGOTIATE_NTLM: u32 = 0x0000_0200;
    /// Always sign (required by most servers, harmless without session security).
    pub const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
    /// The target name is a domain.
    pub const TARGET_TYPE_DOMAIN: u32 = 0x0001_0000;
    /// The target name is a server.
    pub const TARGET_TYPE_SERVER: u32 = 0x0002_0000;
    /// Extended session security (NTLM2 session response; implied by NTLMv2).
    pub const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
    /// The CHALLENGE message carries target information.
    pub const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
    /// A Version field follows the fixed header.
    pub const NEGOTIATE_VERSION: u32 = 0x0200_0000;
    /// 128-bit session keys.
    pub const NEGOTIATE_128: u32 = 0x2000_0000;
    /// 56-bit session keys.
    pub const NEGOTIATE_56: u32 = 0x8000_0000;
}

/// The flags the client asks for in its NEGOTIATE message and keeps in its AUTHENTICATE
/// message when the server agreed. No signing, sealing or key exchange: POP3 uses NTLM
/// for the login only.
pub const CLIENT_FLAGS: u32 = flags::NEGOTIATE_UNICODE
    | flags::NEGOTIATE_OEM
    | flags::REQUEST_TARGET
    | flags::NEGOTIATE_NTLM
    | flags::NEGOTIATE_ALWAYS_SIGN
    | flags::NEGOTIATE_EXTENDED_SESSIONSECURITY
    | flags::NEGOTIATE_TARGET_INFO
    | flags::NEGOTIATE_128
    | flags::NEGOTIATE_56;

/// AV pair identifiers (MS-NLMP 2.2.2.1).
pub mod av {
    /// The end of the list.
    pub const EOL: u16 = 0;
    /// The server's NetBIOS computer name.
    pub const NB_COMPUTER_NAME: u16 = 1;
    /// The server's NetBIOS domain name.
    pub const NB_DOMAIN_NAME: u16 = 2;
    /// The server's DNS computer name.
    pub const DNS_COMPUTER_NAME: u16 = 3;
    /// The server's DNS domain name.
    pub const DNS_DOMAIN_NAME: u16 = 4;
    /// Flags (MIC present, ...).
    pub const FLAGS: u16 = 6;
    /// The server's FILETIME (MsvAvTimestamp).
    pub const TIMESTAMP: u16 = 7;
}

/// Why an NTLM message could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NtlmError {
    /// Shorter than the fixed part of its type.
    #[error("NTLM message too short: {len} octets, at least {min} needed")]
    TooShort {
        /// Octets received.
        len: usize,
        /// Octets the fixed header needs.
        min: usize,
    },
    /// Does not start with `NTLMSSP\0`.
    #[error("not an NTLM message (no NTLMSSP signature)")]
    BadSignature,
    /// Another message type than the one expected.
    #[error("NTLM message of type {found} where type {expected} was expected")]
    WrongType {
        /// The type wanted.
        expected: u32,
        /// The type in the message.
        found: u32,
    },
    /// A field's offset and length point outside the message.
    #[error(
        "NTLM {field} field (offset {offset}, length {len}) lies outside the {total}-octet message"
    )]
    FieldOutOfRange {
        /// The field.
        field: &'static str,
        /// Its offset.
        offset: u32,
        /// Its length.
        len: u16,
        /// The message's length.
        total: usize,
    },
    /// An AV pair runs past the end of the target information.
    #[error(
        "NTLM target information is malformed: AV pair {id} at offset {offset} runs past its end"
    )]
    AvPairOutOfRange {
        /// The AV pair's identifier.
        id: u16,
        /// Its offset inside the target information.
        offset: usize,
    },
    /// The MsvAvTimestamp pair is not 8 octets.
    #[error("NTLM timestamp AV pair has {0} octets instead of 8")]
    BadTimestamp(usize),
    /// A UTF-16 text field has an odd length or unpaired surrogates.
    #[error("NTLM {0} field is not valid UTF-16")]
    BadText(&'static str),
    /// Text that the negotiated OEM character set cannot carry (only ASCII is sent).
    #[error("the server negotiated OEM text, which cannot carry the non-ASCII {0}")]
    NotOem(&'static str),
    /// A field that would exceed the 65,535 octets an NTLM length can say.
    #[error("NTLM {0} field would exceed 65535 octets")]
    TooLong(&'static str),
    /// The user name is empty (`DOMAIN\` alone).
    #[error("NTLM needs a user name (the login has only a domain)")]
    EmptyUser,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Checks the signature, the type and the minimum length; returns the flags at `flags_at`.
fn header(b: &[u8], expected: u32, min: usize, flags_at: usize) -> Result<u32, NtlmError> {
    if b.len() < min {
        return Err(NtlmError::TooShort { len: b.len(), min });
    }
    if !b.starts_with(SIGNATURE) {
        return Err(NtlmError::BadSignature);
    }
    let found = u32_at(b, 8).ok_or(NtlmError::TooShort { len: b.len(), min })?;
    if found != expected {
        return Err(NtlmError::WrongType { expected, found });
    }
    u32_at(b, flags_at).ok_or(NtlmError::TooShort { len: b.len(), min })
}

/// The payload a field descriptor (length, allocated length, offset) at `at` points to.
fn field<'a>(b: &'a [u8], at: usize, name: &'static str) -> Result<&'a [u8], NtlmError> {
    let short = NtlmError::TooShort {
        len: b.len(),
        min: at + 8,
    };
    let len = u16_at(b, at).ok_or(short.clone())?;
    let offset = u32_at(b, at + 4).ok_or(short)?;
    if len == 0 {
        return Ok(&[]);
    }
    usize::try_from(offset)
        .ok()
        .and_then(|start| Some(start..start.checked_add(usize::from(len))?))
        .and_then(|range| b.get(range))
        .ok_or(NtlmError::FieldOutOfRange {
            field: name,
            offset,
            len,
            total: b.len(),
        })
}

/// Decodes a text field per the negotiated character set (OEM is read as Latin-1).
fn text(bytes: &[u8], unicode: bool, name: &'static str) -> Result<String, NtlmError> {
    if !unicode {
        return Ok(bytes.iter().map(|&b| char::from(b)).collect());
    }
    if !bytes.len().is_multiple_of(2) {
        return Err(NtlmError::BadText(name));
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| NtlmError::BadText(name))
}

/// Encodes text per the negotiated character set; OEM carries ASCII only.
fn encode(s: &str, unicode: bool, name: &'static str) -> Result<Vec<u8>, NtlmError> {
    if unicode {
        Ok(utf16le(s))
    } else if s.is_ascii() {
        Ok(s.as_bytes().to_vec())
    } else {
        Err(NtlmError::NotOem(name))
    }
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// Upper case, one character for one (as Windows maps user names): a character whose
/// upper case is several characters (`ß`) is kept.
fn upper(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut u = c.to_uppercase();
            match (u.next(), u.next()) {
                (Some(one), None) => one,
                _ => c,
            }
        })
        .collect()
}

/// Builds a message from a fixed header and payload fields: each field's descriptor is
/// written at its `at` and its bytes appended in order after `header_len` octets.
fn assemble(
    mut head: Vec<u8>,
    fields: &[(usize, &'static str, &[u8])],
) -> Result<Vec<u8>, NtlmError> {
    let mut payload = Vec::new();
    for &(at, name, bytes) in fields {
        let len = u16::try_from(bytes.len()).map_err(|_| NtlmError::TooLong(name))?;
        let offset =
            u32::try_from(head.len() + payload.len()).map_err(|_| NtlmError::TooLong(name))?;
        head[at..at + 2].copy_from_slice(&len.to_le_bytes());
        head[at + 2..at + 4].copy_from_slice(&len.to_le_bytes());
        head[at + 4..at + 8].copy_from_slice(&offset.to_le_bytes());
        payload.extend_from_slice(bytes);
    }
    head.extend_from_slice(&payload);
    Ok(head)
}

/// A fixed header of `len` octets: signature, type and flags at `flags_at`.
fn fixed(len: usize, kind: u32, flags_at: usize, flags: u32) -> Vec<u8> {
    let mut head = vec![0u8; len];
    head[..8].copy_from_slice(SIGNATURE);
    head[8..12].copy_from_slice(&kind.to_le_bytes());
    head[flags_at..flags_at + 4].copy_from_slice(&flags.to_le_bytes());
    head
}

// ------------------------------------------------------------------------ NEGOTIATE

/// The client's NEGOTIATE message: [`CLIENT_FLAGS`], no domain, no workstation, no
/// version (32 octets).
pub fn negotiate() -> Vec<u8> {
    fixed(32, TYPE_NEGOTIATE, 12, CLIENT_FLAGS)
}

/// A NEGOTIATE message as a server reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiate {
    /// The flags the client asked for.
    pub flags: u32,
}

impl Negotiate {
    /// Reads a NEGOTIATE message (the optional domain and workstation are not used).
    pub fn parse(b: &[u8]) -> Result<Self, NtlmError> {
        let flags = header(b, TYPE_NEGOTIATE, 16, 12)?;
        Ok(Self { flags })
    }
}

// ------------------------------------------------------------------------ target info

/// One AV pair of the target information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvPair {
    /// The identifier (see [`av`]).
    pub id: u16,
    /// The value, as sent.
    pub value: Vec<u8>,
}

/// The target information of a CHALLENGE message: AV pairs, without the final EOL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetInfo {
    /// The pairs in the order received.
    pub pairs: Vec<AvPair>,
}

impl TargetInfo {
    /// Reads AV pairs up to MsvAvEOL or the end (a missing EOL is tolerated); a pair
    /// that runs past the end, or a timestamp that is not 8 octets, is an error.
    pub fn parse(b: &[u8]) -> Result<Self, NtlmError> {
        let mut pairs = Vec::new();
        let mut at = 0usize;
        while at < b.len() {
            let (id, len) = match (u16_at(b, at), u16_at(b, at + 2)) {
                (Some(id), Some(len)) => (id, usize::from(len)),
                (id, _) => {
                    return Err(NtlmError::AvPairOutOfRange {
                        id: id.unwrap_or(0),
                        offset: at,
                    })
                }
            };
            if id == av::EOL {
                break;
            }
            let value = b
                .get(at + 4..at + 4 + len)
                .ok_or(NtlmError::AvPairOutOfRange { id, offset: at })?;
            if id == av::TIMESTAMP && len != 8 {
                return Err(NtlmError::BadTimestamp(len));
            }
            pairs.push(AvPair {
                id,
                value: value.to_vec(),
            });
            at += 4 + len;
        }
        Ok(Self { pairs })
    }

    /// The wire form, ending with MsvAvEOL.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.pairs {
            // Values longer than a u16 cannot have been parsed; a built one is cut.
            let len = u16::try_from(p.value.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&p.id.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&p.value[..usize::from(len)]);
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out
    }

    /// The first value of `id`.
    pub fn get(&self, id: u16) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.value.as_slice())
    }

    /// MsvAvTimestamp, a FILETIME, when the server sent one.
    pub fn timestamp(&self) -> Option<u64> {
        let v: [u8; 8] = self.get(av::TIMESTAMP)?.try_into().ok()?;
        Some(u64::from_le_bytes(v))
    }
}

// ------------------------------------------------------------------------ CHALLENGE

/// A CHALLENGE message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The flags the server agreed to.
    pub flags: u32,
    /// The eight random octets the response proves knowledge of the password over.
    pub server_challenge: [u8; 8],
    /// The target name (the domain, or the server for a local account).
    pub target_name: String,
    /// The target information.
    pub target_info: TargetInfo,
}

impl Challenge {
    /// Reads a CHALLENGE message; every offset and length is checked against `b`.
    /// A 32-octet message (no target information, as very old servers send) is accepted.
    pub fn parse(b: &[u8]) -> Result<Self, NtlmError> {
        let flags = header(b, TYPE_CHALLENGE, 32, 20)?;
        let unicode = flags & flags::NEGOTIATE_UNICODE != 0;
        let target_name = text(field(b, 12, "target name")?, unicode, "target name")?;
        let mut server_challenge = [0u8; 8];
        server_challenge.copy_from_slice(&b[24..32]);
        let target_info = if b.len() >= 48 {
            TargetInfo::parse(field(b, 40, "target info")?)?
        } else {
            TargetInfo::default()
        };
        Ok(Self {
            flags,
            server_challenge,
            target_name,
            target_info,
        })
    }

    /// The wire form (no Version field), as a server sends it.
    pub fn to_bytes(&self) -> Result<Vec<u8>, NtlmError> {
        let unicode = self.flags & flags::NEGOTIATE_UNICODE != 0;
        let mut head = fixed(48, TYPE_CHALLENGE, 20, self.flags);
        head[24..32].copy_from_slice(&self.server_challenge);
        let name = encode(&self.target_name, unicode, "target name")?;
        let info = self.target_info.to_bytes();
        assemble(
            head,
            &[(12, "target name", &name), (40, "target info", &info)],
        )
    }
}

// ------------------------------------------------------------------------ NTLMv2

/// NTOWFv2 (MS-NLMP 3.3.2): HMAC-MD5 keyed with MD4 of the UTF-16LE password, over the
/// upper-cased user name followed by the domain as given, both UTF-16LE. It is as good
/// as the password: never log it.
pub fn ntowfv2(password: &str, user: &str, domain: &str) -> [u8; 16] {
    let nt_hash: [u8; 16] = Md4::digest(utf16le(password)).into();
    let mut mac = hmac_md5(&nt_hash);
    mac.update(&utf16le(&upper(user)));
    mac.update(&utf16le(domain));
    mac.finalize().into_bytes().into()
}

/// HMAC-MD5 keyed with a 16-octet key. HMAC pads a key shorter than the hash's block
/// with zeros, so the padded block is the same key, given without a fallible call.
fn hmac_md5(key: &[u8; 16]) -> HmacMd5 {
    let mut block = [0u8; 64];
    block[..16].copy_from_slice(key);
    <HmacMd5 as Mac>::new(&block.into())
}

/// The NTLMv2 client blob ("temp" in MS-NLMP 3.3.2): version 1.1, the time, the client
/// challenge and the target information (with its EOL), then four zero octets.
pub fn client_blob(time: u64, client_challenge: &[u8; 8], target_info: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(28 + target_info.len() + 4);
    blob.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
    blob.extend_from_slice(&time.to_le_bytes());
    blob.extend_from_slice(client_challenge);
    blob.extend_from_slice(&[0, 0, 0, 0]);
    blob.extend_from_slice(target_info);
    blob.extend_from_slice(&[0, 0, 0, 0]);
    blob
}

/// NTProofStr: HMAC-MD5 keyed with NTOWFv2 over the server challenge and the blob.
pub fn nt_proof(key: &[u8; 16], server_challenge: &[u8; 8], blob: &[u8]) -> [u8; 16] {
    let mut mac = hmac_md5(key);
    mac.update(server_challenge);
    mac.update(blob);
    mac.finalize().into_bytes().into()
}

/// The LMv2 response: HMAC-MD5 keyed with NTOWFv2 over both challenges, then the client
/// challenge (24 octets).
pub fn lmv2_response(
    key: &[u8; 16],
    server_challenge: &[u8; 8],
    client_challenge: &[u8; 8],
) -> [u8; 24] {
    let mut mac = hmac_md5(key);
    mac.update(server_challenge);
    mac.update(client_challenge);
    let mut out = [0u8; 24];
    out[..16].copy_from_slice(&mac.finalize().into_bytes());
    out[16..].copy_from_slice(client_challenge);
    out
}

/// The session base key (MS-NLMP 3.3.2): HMAC-MD5 keyed with NTOWFv2 over NTProofStr.
/// Unused by a login-only exchange; exposed for the specification's test vectors.
pub fn session_base_key(key: &[u8; 16], proof: &[u8; 16]) -> [u8; 16] {
    let mut mac = hmac_md5(key);
    mac.update(proof);
    mac.finalize().into_bytes().into()
}

/// A FILETIME (100 ns units since 1601-01-01) from a time since the Unix epoch.
pub fn filetime(since_unix_epoch: Duration) -> u64 {
    const EPOCH_DIFFERENCE_SECS: u64 = 11_644_473_600;
    since_unix_epoch
        .as_secs()
        .saturating_add(EPOCH_DIFFERENCE_SECS)
        .saturating_mul(10_000_000)
        .saturating_add(u64::from(since_unix_epoch.subsec_nanos() / 100))
}

// ------------------------------------------------------------------------ login names

/// Where the domain of an NTLM login comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain<'a> {
    /// Given with the user name (`DOMAIN\user`), or empty for a UPN (`user@domain`).
    Given(&'a str),
    /// A bare user name: the CHALLENGE's target name.
    FromChallenge,
}

/// A login name split as NTLM needs it: `DOMAIN\user` gives the domain and the user;
/// `user@domain` (a UPN) is the user name as it is, with an empty domain; a bare user
/// name takes the domain from the server's challenge.
pub fn split_login(login: &str) -> (Domain<'_>, &str) {
    if let Some((domain, user)) = login.split_once('\\') {
        (Domain::Given(domain), user)
    } else if login.contains('@') {
        (Domain::Given(""), login)
    } else {
        (Domain::FromChallenge, login)
    }
}

// ------------------------------------------------------------------------ AUTHENTICATE

/// An AUTHENTICATE message ready to send. Its bytes let an eavesdropper try passwords
/// offline, so it prints as `***` and goes only onto the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthenticateMessage(Vec<u8>);

impl AuthenticateMessage {
    /// The octets to send.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for AuthenticateMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthenticateMessage(***)")
    }
}

/// The fixed header of an AUTHENTICATE message without Version and MIC.
const AUTHENTICATE_HEADER: usize = 64;

/// The client's AUTHENTICATE message for `challenge`, logging in as `login` (see
/// [`split_login`]) with an NTLMv2 response over `client_challenge` (eight random
/// octets) and `client_time` (a FILETIME, used when the server sent no timestamp).
/// When the server sent MsvAvTimestamp, its time goes into the blob and the LMv2
/// response is 24 zero octets, as MS-NLMP 3.1.5.1.2 asks.
pub fn authenticate(
    challenge: &Challenge,
    login: &str,
    password: &str,
    client_challenge: [u8; 8],
    client_time: u64,
) -> Result<AuthenticateMessage, NtlmError> {
    let (domain, user) = split_login(login);
    if user.is_empty() {
        return Err(NtlmError::EmptyUser);
    }
    let domain = match domain {
        Domain::Given(d) => d,
        Domain::FromChallenge => challenge.target_name.as_str(),
    };
    // Unicode when the server allows it; OEM (ASCII) only when it insists.
    let unicode = challenge.flags & flags::NEGOTIATE_UNICODE != 0
        || challenge.flags & flags::NEGOTIATE_OEM == 0;
    let charset = if unicode {
        flags::NEGOTIATE_UNICODE
    } else {
        flags::NEGOTIATE_OEM
    };
    let agreed =
        (challenge.flags & CLIENT_FLAGS & !(flags::NEGOTIATE_UNICODE | flags::NEGOTIATE_OEM))
            | charset
            | flags::NEGOTIATE_NTLM;

    let key = ntowfv2(password, user, domain);
    let server_time = challenge.target_info.timestamp();
    let blob = client_blob(
        server_time.unwrap_or(client_time),
        &client_challenge,
        &challenge.target_info.to_bytes(),
    );
    let proof = nt_proof(&key, &challenge.server_challenge, &blob);
    let mut nt = Vec::with_capacity(16 + blob.len());
    nt.extend_from_slice(&proof);
    nt.extend_from_slice(&blob);
    let lm = match server_time {
        Some(_) => [0u8; 24],
        None => lmv2_response(&key, &challenge.server_challenge, &client_challenge),
    };

    let head = fixed(AUTHENTICATE_HEADER, TYPE_AUTHENTICATE, 60, agreed);
    let domain = encode(domain, unicode, "domain")?;
    let user = encode(user, unicode, "user")?;
    let message = assemble(
        head,
        &[
            (28, "domain", &domain),
            (36, "user", &user),
            (44, "workstation", &[]),
            (12, "LM response", &lm),
            (20, "NT response", &nt),
            (52, "session key", &[]),
        ],
    )?;
    Ok(AuthenticateMessage(message))
}

/// An AUTHENTICATE message as a server reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct Authenticate {
    /// The flags.
    pub flags: u32,
    /// The LM (or LMv2) response.
    pub lm_response: Vec<u8>,
    /// The NT response: NTProofStr and the client blob for NTLMv2.
    pub nt_response: Vec<u8>,
    /// The domain the client named (may be empty).
    pub domain: String,
    /// The user name.
    pub user: String,
    /// The client's workstation name (may be empty).
    pub workstation: String,
}

impl fmt::Debug for Authenticate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticate")
            .field("flags", &format_args!("{:#010x}", self.flags))
            .field("domain", &self.domain)
            .field("user", &self.user)
            .field("workstation", &self.workstation)
            .field("responses", &"***")
            .finish()
    }
}

/// The shortest NTLMv2 response: NTProofStr and the blob's fixed part.
const MIN_NTLMV2_RESPONSE: usize = 16 + 28;

impl Authenticate {
    /// Reads an AUTHENTICATE message; every offset and length is checked against `b`.
    pub fn parse(b: &[u8]) -> Result<Self, NtlmError> {
        let flags = header(b, TYPE_AUTHENTICATE, AUTHENTICATE_HEADER, 60)?;
        let unicode = flags & flags::NEGOTIATE_UNICODE != 0;
        // Unused (no key exchange), but checked like every other field.
        field(b, 52, "session key")?;
        Ok(Self {
            flags,
            lm_response: field(b, 12, "LM response")?.to_vec(),
            nt_response: field(b, 20, "NT response")?.to_vec(),
            domain: text(field(b, 28, "domain")?, unicode, "domain")?,
            user: text(field(b, 36, "user")?, unicode, "user")?,
            workstation: text(field(b, 44, "workstation")?, unicode, "workstation")?,
        })
    }

    /// True when the NTLMv2 response proves knowledge of `password` for the user and
    /// domain this message names, over `server_challenge` (the one this server sent).
    /// NTProofStr is compared in constant time. An NTLMv1 or LM-only response is false.
    /// The caller decides which account the message's user and domain stand for.
    pub fn verify(&self, server_challenge: &[u8; 8], password: &str) -> bool {
        if self.nt_response.len() < MIN_NTLMV2_RESPONSE {
            return false;
        }
        let (proof, blob) = self.nt_response.split_at(16);
        let key = ntowfv2(password, &self.user, &self.domain);
        let mut mac = hmac_md5(&key);
        mac.update(server_challenge);
        mac.update(blob);
        mac.verify_slice(proof).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // MS-NLMP 4.2.1 and 4.2.4: the published NTLMv2 example.
    const USER: &str = "User";
    const DOMAIN: &str = "Domain";
    const PASSWORD: &str = "Password";
    const SERVER_CHALLENGE: [u8; 8] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
    const CLIENT_CHALLENGE: [u8; 8] = [0xaa; 8];

    /// MS-NLMP 4.2.4.3: the CHALLENGE message of the example.
    fn spec_challenge() -> Vec<u8> {
        let mut m = hex("4e544c4d53535000020000000c000c003800000033828ae20123456789abcdef");
        m.extend(hex("00000000000000002400240044000000060070170000000f"));
        m.extend(utf16le("Server"));
        m.extend(spec_target_info());
        m
    }

    /// The target information of the example: NbDomainName "Domain", NbComputerName
    /// "Server", EOL.
    fn spec_target_info() -> Vec<u8> {
        let mut t = hex("02000c00");
        t.extend(utf16le("Domain"));
        t.extend(hex("01000c00"));
        t.extend(utf16le("Server"));
        t.extend(hex("00000000"));
        t
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn h(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn ntowfv2_matches_the_specification() {
        // MS-NLMP 4.2.4.1.1
        assert_eq!(
            h(&ntowfv2(PASSWORD, USER, DOMAIN)),
            "0c868a403bfd7a93a3001ef22ef02e3f"
        );
    }

    #[test]
    fn ntlmv2_responses_match_the_specification() {
        let key = ntowfv2(PASSWORD, USER, DOMAIN);
        // The example uses time 0 and the target information above.
        let blob = client_blob(0, &CLIENT_CHALLENGE, &spec_target_info());
        let proof = nt_proof(&key, &SERVER_CHALLENGE, &blob);
        // MS-NLMP 4.2.4.2.2
        assert_eq!(h(&proof), "68cd0ab851e51c96aabc927bebef6a1c");
        // MS-NLMP 4.2.4.1.2
        assert_eq!(
            h(&session_base_key(&key, &proof)),
            "8de40ccadbc14a82f15cb0ad0de95ca3"
        );
        // MS-NLMP 4.2.4.2.1
        assert_eq!(
            h(&lmv2_response(&key, &SERVER_CHALLENGE, &CLIENT_CHALLENGE)),
            "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa"
        );
    }

    #[test]
    fn the_specification_challenge_parses() {
        let c = Challenge::parse(&spec_challenge()).unwrap();
        assert_eq!(c.flags, 0xe28a_8233);
        assert_eq!(c.server_challenge, SERVER_CHALLENGE);
        assert_eq!(c.target_name, "Server");
        assert_eq!(c.target_info.pairs.len(), 2);
        assert_eq!(
            c.target_info.get(av::NB_DOMAIN_NAME),
            Some(&utf16le("Domain")[..])
        );
        assert_eq!(c.target_info.timestamp(), None);
        assert_eq!(c.target_info.to_bytes(), spec_target_info());
    }

    #[test]
    fn authenticate_for_the_specification_challenge_carries_the_published_proof() {
        let c = Challenge::parse(&spec_challenge()).unwrap();
        let m = authenticate(&c, "Domain\\User", PASSWORD, CLIENT_CHALLENGE, 0).unwrap();
        let a = Authenticate::parse(m.as_bytes()).unwrap();
        assert_eq!((a.domain.as_str(), a.user.as_str()), (DOMAIN, USER));
        assert_eq!(h(&a.nt_response[..16]), "68cd0ab851e51c96aabc927bebef6a1c");
        assert_eq!(
            h(&a.lm_response),
            "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa",
            "no server timestamp: LMv2 is sent"
        );
        assert_ne!(a.flags & flags::NEGOTIATE_UNICODE, 0);
        assert!(a.verify(&SERVER_CHALLENGE, PASSWORD));
        assert!(!a.verify(&SERVER_CHALLENGE, "password"));
        assert!(!a.verify(&[0; 8], PASSWORD), "another challenge");
    }

    #[test]
    fn a_server_timestamp_goes_into_the_blob_and_zeroes_lmv2() {
        let mut c = Challenge::parse(&spec_challenge()).unwrap();
        let time = 0x01d2_d400_fdc8_0b80u64;
        c.target_info.pairs.push(AvPair {
            id: av::TIMESTAMP,
            value: time.to_le_bytes().to_vec(),
        });
        let c = Challenge::parse(&c.to_bytes().unwrap()).unwrap();
        assert_eq!(c.target_info.timestamp(), Some(time));
        let m = authenticate(&c, "Domain\\User", PASSWORD, CLIENT_CHALLENGE, 42).unwrap();
        let a = Authenticate::parse(m.as_bytes()).unwrap();
        assert_eq!(a.lm_response, vec![0u8; 24]);
        assert_eq!(&a.nt_response[24..32], &time.to_le_bytes());
        assert!(a.verify(&SERVER_CHALLENGE, PASSWORD));
        // Without one, the client's time is used.
        let c = Challenge::parse(&spec_challenge()).unwrap();
        let m = authenticate(&c, "Domain\\User", PASSWORD, CLIENT_CHALLENGE, 42).unwrap();
        let a = Authenticate::parse(m.as_bytes()).unwrap();
        assert_eq!(&a.nt_response[24..32], &42u64.to_le_bytes());
    }

    #[test]
    fn login_names_split_into_domain_and_user() {
        assert_eq!(
            split_login("CONTOSO\\info"),
            (Domain::Given("CONTOSO"), "info")
        );
        assert_eq!(
            split_login("info@contoso.example"),
            (Domain::Given(""), "info@contoso.example")
        );
        assert_eq!(split_login("info"), (Domain::FromChallenge, "info"));
        let c = Challenge::parse(&spec_challenge()).unwrap();
        let name = |login: &str| {
            let m = authenticate(&c, login, "pw", CLIENT_CHALLENGE, 0).unwrap();
            let a = Authenticate::parse(m.as_bytes()).unwrap();
            (a.domain, a.user)
        };
        assert_eq!(name("info"), ("Server".into(), "info".into()));
        assert_eq!(name("i@d.example"), (String::new(), "i@d.example".into()));
        assert_eq!(name("D\\u"), ("D".into(), "u".into()));
        assert_eq!(
            authenticate(&c, "D\\", "pw", CLIENT_CHALLENGE, 0),
            Err(NtlmError::EmptyUser)
        );
    }

    #[test]
    fn the_user_name_is_upper_cased_in_the_key_and_the_domain_is_not() {
        assert_eq!(ntowfv2("pw", "user", "D"), ntowfv2("pw", "USER", "D"));
        assert_ne!(ntowfv2("pw", "user", "D"), ntowfv2("pw", "user", "d"));
        assert_eq!(upper("straße"), "STRAßE");
    }

    #[test]
    fn negotiate_round_trips() {
        let n = negotiate();
        assert_eq!(n.len(), 32);
        assert_eq!(
            Negotiate::parse(&n),
            Ok(Negotiate {
                flags: CLIENT_FLAGS
            })
        );
    }

    #[test]
    fn oem_only_servers_get_ascii_text() {
        let mut c = Challenge::parse(&spec_challenge()).unwrap();
        c.flags &= !flags::NEGOTIATE_UNICODE;
        c.flags |= flags::NEGOTIATE_OEM;
        let m = authenticate(&c, "D\\u", "pw", CLIENT_CHALLENGE, 0).unwrap();
        let a = Authenticate::parse(m.as_bytes()).unwrap();
        assert_eq!(a.flags & flags::NEGOTIATE_UNICODE, 0);
        assert_eq!((a.domain.as_str(), a.user.as_str()), ("D", "u"));
        assert!(a.verify(&SERVER_CHALLENGE, "pw"));
        assert_eq!(
            authenticate(&c, "D\\ü", "pw", CLIENT_CHALLENGE, 0),
            Err(NtlmError::NotOem("user"))
        );
    }

    #[test]
    fn ntlmv1_responses_never_verify() {
        let c = Challenge::parse(&spec_challenge()).unwrap();
        let m = authenticate(&c, "D\\u", "pw", CLIENT_CHALLENGE, 0).unwrap();
        let mut a = Authenticate::parse(m.as_bytes()).unwrap();
        a.nt_response.truncate(24);
        assert!(!a.verify(&SERVER_CHALLENGE, "pw"));
        a.nt_response.clear();
        assert!(!a.verify(&SERVER_CHALLENGE, "pw"));
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Challenge::parse(&spec_challenge()).unwrap();
        let m = authenticate(&c, "D\\u", "pw", CLIENT_CHALLENGE, 0).unwrap();
        assert_eq!(format!("{m:?}"), "AuthenticateMessage(***)");
        let a = Authenticate::parse(m.as_bytes()).unwrap();
        let shown = format!("{a:?}");
        assert!(
            shown.contains("***") && !shown.contains("nt_response"),
            "{shown}"
        );
    }

    #[test]
    fn hostile_challenges_are_typed_errors() {
        let good = spec_challenge();
        assert_eq!(
            Challenge::parse(&good[..20]),
            Err(NtlmError::TooShort { len: 20, min: 32 })
        );
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(Challenge::parse(&bad), Err(NtlmError::BadSignature));
        let mut bad = good.clone();
        bad[8] = 3;
        assert_eq!(
            Challenge::parse(&bad),
            Err(NtlmError::WrongType {
                expected: 2,
                found: 3
            })
        );
        // Target name offset past the end.
        let mut bad = good.clone();
        bad[16..20].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(matches!(
            Challenge::parse(&bad),
            Err(NtlmError::FieldOutOfRange {
                field: "target name",
                ..
            })
        ));
        // Target info length past the end.
        let mut bad = good.clone();
        bad[40..42].copy_from_slice(&0x0100u16.to_le_bytes());
        assert!(matches!(
            Challenge::parse(&bad),
            Err(NtlmError::FieldOutOfRange {
                field: "target info",
                ..
            })
        ));
        // An AV pair longer than the target information.
        let mut bad = good.clone();
        let ti = 0x44;
        bad[ti + 2..ti + 4].copy_from_slice(&0x00f0u16.to_le_bytes());
        assert!(matches!(
            Challenge::parse(&bad),
            Err(NtlmError::AvPairOutOfRange { id: 2, offset: 0 })
        ));
        // Odd-length UTF-16 target name.
        let mut bad = good.clone();
        bad[12..14].copy_from_slice(&11u16.to_le_bytes());
        assert_eq!(
            Challenge::parse(&bad),
            Err(NtlmError::BadText("target name"))
        );
        // A timestamp that is not 8 octets.
        let mut ti = hex("07000400");
        ti.extend([1, 2, 3, 4]);
        assert_eq!(TargetInfo::parse(&ti), Err(NtlmError::BadTimestamp(4)));
        // Half an AV pair header.
        assert_eq!(
            TargetInfo::parse(&[2, 0, 4]),
            Err(NtlmError::AvPairOutOfRange { id: 2, offset: 0 })
        );
        // A missing EOL is tolerated.
        let t = TargetInfo::parse(&spec_target_info()[..32]).unwrap();
        assert_eq!(t.pairs.len(), 2);
        // 32 octets: no target info at all.
        let old = Challenge::parse(&good[..32]);
        assert!(
            matches!(&old, Err(NtlmError::FieldOutOfRange { .. })),
            "its target name still points past 32: {old:?}"
        );
        let mut old = good[..32].to_vec();
        old[12..20].fill(0);
        assert_eq!(
            Challenge::parse(&old).unwrap().target_info,
            TargetInfo::default()
        );
    }

    #[test]
    fn hostile_authenticate_messages_are_typed_errors() {
        let c = Challenge::parse(&spec_challenge()).unwrap();
        let good = authenticate(&c, "D\\u", "pw", CLIENT_CHALLENGE, 0)
            .unwrap()
            .as_bytes()
            .to_vec();
        assert!(matches!(
            Authenticate::parse(&good[..63]),
            Err(NtlmError::TooShort { min: 64, .. })
        ));
        for at in [12, 20, 28, 36, 44, 52] {
            let mut bad = good.clone();
            bad[at..at + 2].copy_from_slice(&u16::MAX.to_le_bytes());
            assert!(
                matches!(
                    Authenticate::parse(&bad),
                    Err(NtlmError::FieldOutOfRange { .. })
                ),
                "field at {at}"
            );
        }
        assert_eq!(
            Negotiate::parse(&good),
            Err(NtlmError::WrongType {
                expected: 1,
                found: 3
            })
        );
        assert_eq!(
            Negotiate::parse(b"NTLMSSP"),
            Err(NtlmError::TooShort { len: 7, min: 16 })
        );
    }

    #[test]
    fn no_input_prefix_or_single_byte_change_panics() {
        let c = Challenge::parse(&spec_challenge()).unwrap();
        let auth = authenticate(&c, "D\\u", "pw", CLIENT_CHALLENGE, 0).unwrap();
        for msg in [spec_challenge(), auth.as_bytes().to_vec(), negotiate()] {
            for n in 0..=msg.len() {
                let _ = Challenge::parse(&msg[..n]);
                let _ = Authenticate::parse(&msg[..n]);
                let _ = Negotiate::parse(&msg[..n]);
                let _ = TargetInfo::parse(&msg[..n]);
            }
            for i in 0..msg.len() {
                for v in [0x00, 0x7f, 0x80, 0xff] {
                    let mut m = msg.clone();
                    m[i] = v;
                    if let Ok(c) = Challenge::parse(&m) {
                        let _ = authenticate(&c, "u", "pw", CLIENT_CHALLENGE, 0);
                    }
                    if let Ok(a) = Authenticate::parse(&m) {
                        let _ = a.verify(&SERVER_CHALLENGE, "pw");
                    }
                }
            }
        }
    }

    #[test]
    fn filetime_counts_from_1601() {
        assert_eq!(filetime(Duration::ZERO), 116_444_736_000_000_000);
        assert_eq!(
            filetime(Duration::new(1, 250)),
            116_444_736_000_000_000 + 10_000_000 + 2
        );
    }
}
