//! Maildrop and message declarations: what the server holds before any session.

use bytes::Bytes;
use popbridge_proto::pop3::AuthMethod;

/// One message as the server stores it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The unique-id listing value; `None` lets the mailbox assign one.
    pub uid: Option<String>,
    /// The message bytes exactly as RETR should deliver them (before dot-stuffing).
    pub data: Bytes,
    /// A size to report in LIST and STAT instead of the true one (a lying server).
    pub reported_size: Option<u64>,
}

impl Message {
    /// A message with an assigned UID and a truthful size.
    pub fn new(data: impl Into<Bytes>) -> Self {
        Self {
            uid: None,
            data: data.into(),
            reported_size: None,
        }
    }

    /// Sets the UID (several messages may share one: a broken server).
    pub fn with_uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = Some(uid.into());
        self
    }

    /// Makes LIST and STAT report `size` instead of the true size.
    pub fn with_reported_size(mut self, size: u64) -> Self {
        self.reported_size = Some(size);
        self
    }
}

/// A user's maildrop and credentials.
#[derive(Debug, Clone)]
pub struct Maildrop {
    /// Login name.
    pub user: String,
    /// Password (USER/PASS, APOP, PLAIN, LOGIN, CRAM-MD5, NTLM).
    pub password: String,
    /// Bearer token accepted by XOAUTH2; the password when `None`.
    pub token: Option<String>,
    /// An OAuth2 provider whose issued, still valid access tokens XOAUTH2 accepts instead
    /// of `token`.
    pub oauth: Option<crate::oauth::OAuthProvider>,
    /// Methods this mailbox accepts (all by default).
    pub methods: Vec<AuthMethod>,
    /// The messages, in maildrop order.
    pub messages: Vec<Message>,
}

impl Maildrop {
    /// An empty mailbox accepting every method.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
            token: None,
            oauth: None,
            methods: AuthMethod::ALL.to_vec(),
            messages: Vec::new(),
        }
    }

    /// Restricts the accepted methods.
    pub fn with_methods(mut self, methods: impl IntoIterator<Item = AuthMethod>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Sets the XOAUTH2 bearer token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Makes XOAUTH2 accept only the access tokens `provider` issued for this user and
    /// that are still valid.
    pub fn with_oauth(mut self, provider: crate::oauth::OAuthProvider) -> Self {
        self.oauth = Some(provider);
        self
    }

    /// Adds a message.
    pub fn with_message(mut self, message: Message) -> Self {
        self.messages.push(message);
        self
    }

    /// Adds `count` generated messages of about `size` octets each.
    pub fn with_demo_messages(mut self, count: usize, size: usize) -> Self {
        let start = self.messages.len();
        for i in start..start + count {
            self.messages
                .push(Message::new(demo_message(&self.user, i, size)));
        }
        self
    }
}

/// A deterministic RFC 5322 message of about `size` octets (at least its header).
pub fn demo_message(user: &str, index: usize, size: usize) -> Bytes {
    let mut m = format!(
        "Return-Path: <sender{index}@example.net>\r\n\
         From: Sender {index} <sender{index}@example.net>\r\n\
         To: {user}@example.org\r\n\
         Subject: Demo message {index}\r\n\
         Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n\
         Message-ID: <demo-{index}-{user}@mock-pop3.invalid>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n"
    )
    .into_bytes();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    let mut n = 0usize;
    while m.len() + line.len() <= size.max(m.len() + 2) {
        if n % 10 == 9 {
            m.extend_from_slice(b".a line that starts with a dot\r\n");
        } else {
            m.extend_from_slice(line);
        }
        n += 1;
    }
    if m.len() < size {
        m.resize(size - 2, b'x');
        m.extend_from_slice(b"\r\n");
    }
    if !m.ends_with(b"\r\n") {
        m.extend_from_slice(b"\r\n");
    }
    Bytes::from(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_messages_are_deterministic_and_near_their_size() {
        assert_eq!(demo_message("bob", 3, 5000), demo_message("bob", 3, 5000));
        for size in [0, 100, 1000, 10_000, 1 << 20] {
            let m = demo_message("bob", 1, size);
            assert!(m.ends_with(b"\r\n"));
            if size > 400 {
                assert_eq!(m.len(), size, "size {size}");
            }
        }
    }
}
