//! The files a configuration names or is: checked before any pass.
//!
//! Responsible for: every `ca_file` being readable and holding a certificate, and refusing
//! a configuration file or `password_file` holding a secret that other users can read.
//! Must never: read a secret's value, or write anything.

use std::path::Path;

use super::{Config, ConfigError};
use crate::secret::SecretSource;

impl Config {
    /// Checks the files the configuration names that must be there before any pass: every
    /// `ca_file` (readable, holding at least one certificate).
    pub fn check_files(&self) -> Result<(), ConfigError> {
        // A pickup folder has no server whose certificate a CA file would verify.
        let transport = self.transport.smtp().and_then(|t| t.ca_file.as_ref());
        let named = std::iter::once(("transport.ca_file".to_string(), transport)).chain(
            self.accounts
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("account[{i}].ca_file"), a.ca_file.as_ref())),
        );
        for (key, file) in named {
            let Some(file) = file else { continue };
            if let Err(e) = crate::net::client_config(Some(file), false, None) {
                return Err(ConfigError::Invalid {
                    path: self.path.clone(),
                    line: None,
                    key: Some(key),
                    message: format!("{e}; fix the path or remove the key"),
                });
            }
        }
        Ok(())
    }
}

impl Config {
    /// Every secret source of the configuration, with what it is for.
    fn secret_sources(&self) -> Vec<(String, &SecretSource)> {
        let mut v = Vec::new();
        for a in &self.accounts {
            match &a.oauth2 {
                Some(o) => {
                    v.push((
                        format!("the OAuth2 refresh token of account {:?}", a.name),
                        &o.refresh_token,
                    ));
                    if let Some(c) = &o.client_secret {
                        v.push((
                            format!("the OAuth2 client secret of account {:?}", a.name),
                            c,
                        ));
                    }
                }
                None => v.push((format!("the password of account {:?}", a.name), &a.secret)),
            }
        }
        if let Some(p) = self.cluster.as_ref().and_then(|c| c.password.as_ref()) {
            v.push(("the cluster database password".to_string(), p));
        }
        v
    }

    /// Refuses a configuration file holding a secret, or a `password_file`, that users
    /// other than its owner can read (as fetchmail and msmtp do).
    pub fn check_private(&self) -> Result<(), ConfigError> {
        let mut inline = None;
        for (what, source) in self.secret_sources() {
            match source {
                SecretSource::Value(_) => inline = inline.or(Some(what)),
                SecretSource::File(path) => exposed(path, &what)?,
                SecretSource::Env(_) | SecretSource::Command(_) => {}
            }
        }
        if let Some(what) = inline {
            exposed(&self.path, &what)?;
        }
        Ok(())
    }
}

/// `Err` when `path` exists and its group or others may read or write it.
fn exposed(path: &Path, holds: &str) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o066 != 0 {
                return Err(ConfigError::Exposed {
                    path: path.to_path_buf(),
                    holds: holds.to_string(),
                    mode,
                });
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, holds);
    Ok(())
}
