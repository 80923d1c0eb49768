//! What `[shared]` reads to authenticate to Redis: passwords from an environment variable
//! or a file, and the TLS material (a CA, a client certificate and key).
//!
//! A file named by a relative path is looked up in `$CREDENTIALS_DIRECTORY` first (where
//! systemd's `LoadCredential=` puts it), then from the working directory. A file holding a
//! secret (a password, the client key) must not be readable by every user: such a file is a
//! config error, as sshd refuses a private key others can read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::super::{err, ConfigError};

/// Where a path from the config is: in `$CREDENTIALS_DIRECTORY` if it is relative and
/// there, else as written.
pub fn locate(path: &Path) -> PathBuf {
    if path.is_relative() {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let candidate = Path::new(&dir).join(path);
            if candidate.exists() {
                return candidate;
            }
        }
    }
    path.to_path_buf()
}

/// The bytes of the file `path` names (config key `key`); `secret`: refused if every user
/// may read it.
pub fn read(key: &str, path: &Path, secret: bool) -> Result<Vec<u8>, ConfigError> {
    let found = locate(path);
    let meta = std::fs::metadata(&found).map_err(|e| err(key, format!("{}: {e}", found.display())))?;
    if secret && meta.permissions().mode() & 0o004 != 0 {
        return Err(err(
            key,
            format!(
                "{} is readable by every user: make it readable by the gateway's user only (chmod o-r), or give it with systemd's LoadCredential=",
                found.display()
            ),
        ));
    }
    std::fs::read(&found).map_err(|e| err(key, format!("{}: {e}", found.display())))
}

/// A password given by exactly one of `<name>_env` (a variable's name) and `<name>_file`:
/// None when neither is set. A file's one trailing line end is not part of it.
pub fn password(name: &str, env: Option<&str>, file: Option<&Path>) -> Result<Option<String>, ConfigError> {
    let (env_key, file_key) = (format!("{name}_env"), format!("{name}_file"));
    let value = match (env, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => return Err(err(&env_key, format!("give {env_key} or {file_key}, not both"))),
        (Some(var), None) => std::env::var(var).map_err(|_| err(&env_key, format!("{var} is not set")))?,
        (None, Some(path)) => {
            let bytes = read(&file_key, path, true)?;
            let text = String::from_utf8(bytes).map_err(|_| err(&file_key, "does not hold UTF-8 text"))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            text.strip_suffix('\r').unwrap_or(text).to_string()
        }
    };
    if value.is_empty() {
        let key = if env.is_some() { env_key } else { file_key };
        return Err(err(&key, "the password is empty"));
    }
    Ok(Some(value))
}

/// A PEM file that holds at least one certificate.
pub fn certificates(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem = read(key, path, false)?;
    let mut certs = CertificateDer::pem_slice_iter(&pem);
    match certs.next() {
        Some(Ok(_)) if certs.all(|c| c.is_ok()) => Ok(pem),
        _ => Err(err(key, format!("{}: no PEM certificate in it", path.display()))),
    }
}

/// A PEM file that holds a private key, readable by the gateway's user only.
pub fn private_key(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    let pem = read(key, path, true)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(pem),
        Err(_) => Err(err(key, format!("{}: no PEM private key in it", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_password_comes_from_one_source_and_a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ok = file(dir.path(), "pw", "s3cret\n", 0o600);
        assert_eq!(
            password("shared.password", None, Some(&ok)).unwrap().as_deref(),
            Some("s3cret")
        );
        assert_eq!(password("shared.password", None, None).unwrap(), None);
        let e = password("shared.password", Some("X"), Some(&ok)).unwrap_err();
        assert!(e.0.contains("not both"), "{e}");
        let open = file(dir.path(), "open", "s3cret", 0o644);
        let e = password("shared.password", None, Some(&open)).unwrap_err();
        assert!(e.0.starts_with("shared.password_file: "), "{e}");
        assert!(e.0.contains("readable by every user"), "{e}");
        assert!(!e.0.contains("s3cret"), "{e}");
        let empty = file(dir.path(), "empty", "\n", 0o600);
        assert!(password("shared.password", None, Some(&empty)).is_err());
        let e = password("shared.password", Some("CARDGATE_TEST_UNSET_PW"), None).unwrap_err();
        assert!(e.0.contains("is not set"), "{e}");
    }
}
