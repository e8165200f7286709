//! Capability sets: what CAPA lists and which optional commands work, before and after login.

use popbridge_proto::pop3::AuthMethod;

/// The RFC 2449 EXPIRE capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expire {
    /// `EXPIRE NEVER`
    Never,
    /// `EXPIRE n`; `Days(0)` means messages are deleted once retrieved (at QUIT).
    Days(u32),
}

/// One phase's capabilities. A switched-off command answers `-ERR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// CAPA itself; when off, CAPA answers `-ERR` (an RFC 1939-only server).
    pub capa: bool,
    /// TOP
    pub top: bool,
    /// UIDL
    pub uidl: bool,
    /// USER/PASS
    pub user: bool,
    /// PIPELINING is advertised (the server always answers pipelined commands in order).
    pub pipelining: bool,
    /// SASL mechanisms offered to AUTH.
    pub sasl: Vec<AuthMethod>,
    /// RESP-CODES: `[IN-USE]`, `[LOGIN-DELAY]`, `[SYS/...]` codes in replies.
    pub resp_codes: bool,
    /// AUTH-RESP-CODE: `[AUTH]` on failed logins.
    pub auth_resp_code: bool,
    /// LOGIN-DELAY n (seconds between logins, enforced).
    pub login_delay: Option<u32>,
    /// EXPIRE
    pub expire: Option<Expire>,
    /// STLS (advertised only while the connection is plain and TLS is configured).
    pub stls: bool,
    /// IMPLEMENTATION text.
    pub implementation: Option<String>,
}

impl Capabilities {
    /// Everything on, as a modern server before login.
    pub fn full() -> Self {
        Self {
            capa: true,
            top: true,
            uidl: true,
            user: true,
            pipelining: true,
            sasl: vec![
                AuthMethod::Plain,
                AuthMethod::Login,
                AuthMethod::CramMd5,
                AuthMethod::Xoauth2,
                AuthMethod::Ntlm,
            ],
            resp_codes: true,
            auth_resp_code: true,
            login_delay: None,
            expire: None,
            stls: true,
            implementation: Some("popbridge-mock-pop3".into()),
        }
    }

    /// What a modern server lists after login: no USER, SASL or STLS.
    pub fn full_after_login() -> Self {
        Self {
            user: false,
            sasl: Vec::new(),
            stls: false,
            ..Self::full()
        }
    }

    /// An RFC 1939 server: no CAPA, no UIDL, no TOP, no SASL, no codes.
    pub fn minimal() -> Self {
        Self {
            capa: false,
            top: false,
            uidl: false,
            user: true,
            pipelining: false,
            sasl: Vec::new(),
            resp_codes: false,
            auth_resp_code: false,
            login_delay: None,
            expire: None,
            stls: false,
            implementation: None,
        }
    }

    /// The CAPA listing body lines (without the `+OK` line or the terminator).
    pub(crate) fn listing(&self, stls_possible: bool) -> Vec<String> {
        // The names of the switched-on flags among `flags`, in order.
        let named = |flags: &[(bool, &str)]| {
            let on = flags.iter().filter(|(on, _)| *on);
            on.map(|(_, name)| name.to_string()).collect::<Vec<_>>()
        };
        let mut v = named(&[(self.top, "TOP"), (self.uidl, "UIDL"), (self.user, "USER")]);
        if !self.sasl.is_empty() {
            let names: Vec<_> = self.sasl.iter().filter_map(|m| m.sasl_name()).collect();
            v.push(format!("SASL {}", names.join(" ")));
        }
        v.extend(named(&[
            (self.resp_codes, "RESP-CODES"),
            (self.auth_resp_code, "AUTH-RESP-CODE"),
            (self.pipelining, "PIPELINING"),
        ]));
        if let Some(d) = self.login_delay {
            v.push(format!("LOGIN-DELAY {d}"));
        }
        match self.expire {
            Some(Expire::Never) => v.push("EXPIRE NEVER".into()),
            Some(Expire::Days(d)) => v.push(format!("EXPIRE {d}")),
            None => {}
        }
        if self.stls && stls_possible {
            v.push("STLS".into());
        }
        if let Some(i) = &self.implementation {
            v.push(format!("IMPLEMENTATION {i}"));
        }
        v
    }
}
