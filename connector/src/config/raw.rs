//! The configuration as written in the file: serde types, unknown keys refused.
//!
//! Responsible for: the shape of `popbridge.toml` (every table and key, with the spans
//! that locate errors) and readable type errors for integers, sizes and durations.
//! Must never: validate or default a value (that is `resolve`).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::{AuthMethod, Profile, TlsMode};
pub(super) use crate::toml_locate::Scalar;

/// The type error of an integer beyond `i64`.
const INT_TOO_LARGE: &str = "integer too large";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a TOML document")]
pub(super) struct RawConfig {
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) profile: Option<Profile>,
    pub(super) parallel_accounts: Option<Spanned<Int>>,
    pub(super) received_header: Option<bool>,
    pub(super) transport: Option<RawTransport>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) timeouts: RawTimeouts,
    #[serde(default)]
    pub(super) account: Vec<Spanned<RawAccount>>,
    pub(super) interval: Option<Spanned<DurationValue>>,
    pub(super) jitter: Option<Spanned<DurationValue>>,
    pub(super) ledger_retention: Option<Spanned<DurationValue>>,
    #[serde(default)]
    pub(super) exchange: RawExchange,
    pub(super) metrics_listen: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) metrics_allow_non_loopback: bool,
    pub(super) cluster: Option<Spanned<RawCluster>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [cluster] table")]
pub(super) struct RawCluster {
    pub(super) database: Option<Spanned<String>>,
    pub(super) password: Option<Spanned<String>>,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) password_command: Option<Spanned<String>>,
    pub(super) instance: Option<Spanned<String>>,
    pub(super) lease_ttl: Option<Spanned<DurationValue>>,
    pub(super) server_sessions: Option<Spanned<Int>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "an [exchange] table")]
pub(super) struct RawExchange {
    pub(super) organization_receive_limit: Option<Spanned<SizeValue>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawDeliveryKind {
    Smtp,
    Pickup,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a catch_all table")]
pub(super) struct RawCatchAll {
    #[serde(default)]
    pub(super) local_domains: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) local_addresses: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [transport] table")]
pub(super) struct RawTransport {
    pub(super) kind: Option<RawDeliveryKind>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) pickup_dir: Option<Spanned<String>>,
    pub(super) failed_dir: Option<Spanned<String>>,
    pub(super) pickup_mode: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<Int>>,
    pub(super) helo: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) starttls: bool,
    pub(super) ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) tls_accept_invalid_certs: bool,
    pub(super) tls_fingerprint: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [limits] table")]
pub(super) struct RawLimits {
    pub(super) max_message_size: Option<Spanned<SizeValue>>,
    pub(super) max_messages_per_session: Option<Spanned<Int>>,
    pub(super) poison_after: Option<Spanned<Int>>,
    pub(super) default_domain: Option<Spanned<String>>,
    pub(super) fallback_sender: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) quarantine_delete: bool,
    pub(super) smtp_max_protocol_errors: Option<Spanned<Int>>,
    pub(super) smtp_reconnects: Option<Spanned<Int>>,
    pub(super) memory_threshold: Option<Spanned<SizeValue>>,
    pub(super) max_download_size: Option<Spanned<SizeValue>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [timeouts] table")]
pub(super) struct RawTimeouts {
    pub(super) connect: Option<Spanned<DurationValue>>,
    pub(super) command: Option<Spanned<DurationValue>>,
    pub(super) data: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [[account]] table")]
pub(super) struct RawAccount {
    pub(super) name: Spanned<String>,
    pub(super) host: Spanned<String>,
    pub(super) port: Option<Spanned<Int>>,
    pub(super) tls: Option<TlsMode>,
    pub(super) auth: Option<AuthMethod>,
    pub(super) username: Spanned<String>,
    pub(super) password: Option<Spanned<String>>,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) password_command: Option<Spanned<String>>,
    pub(super) deliver_to: Spanned<String>,
    pub(super) mailbox_receive_limit: Option<Spanned<SizeValue>>,
    pub(super) catch_all: Option<Spanned<RawCatchAll>>,
    #[serde(default)]
    pub(super) leave_on_server: bool,
    pub(super) ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) tls_accept_invalid_certs: bool,
    pub(super) tls_fingerprint: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) allow_plaintext: bool,
    pub(super) tls_server_name: Option<Spanned<String>>,
    pub(super) verify_list_size: Option<bool>,
    pub(super) oauth2: Option<Spanned<RawOAuth2>>,
    pub(super) interval: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an oauth2 table")]
pub(super) struct RawOAuth2 {
    pub(super) token_url: Spanned<String>,
    pub(super) client_id: Spanned<String>,
    pub(super) client_secret: Option<Spanned<String>>,
    pub(super) client_secret_env: Option<Spanned<String>>,
    pub(super) client_secret_file: Option<Spanned<String>>,
    pub(super) client_secret_command: Option<Spanned<String>>,
    pub(super) refresh_token: Option<Spanned<String>>,
    pub(super) refresh_token_env: Option<Spanned<String>>,
    pub(super) refresh_token_file: Option<Spanned<String>>,
    pub(super) refresh_token_command: Option<Spanned<String>>,
    pub(super) scope: Option<Spanned<String>>,
}

/// A TOML integer, with a readable type error.
pub(super) struct Int(pub(super) i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom(INT_TOO_LARGE))
            }
        }
        d.deserialize_i64(V)
    }
}

pub(super) struct SizeValue(pub(super) Scalar);

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Scalar::deserialize_as(
            d,
            "a size such as \"10MB\" or a number of octets",
            INT_TOO_LARGE,
        )
        .map(SizeValue)
    }
}

pub(super) struct DurationValue(pub(super) Scalar);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Scalar::deserialize_as(
            d,
            "a duration such as \"30s\" or a number of seconds",
            INT_TOO_LARGE,
        )
        .map(DurationValue)
    }
}
