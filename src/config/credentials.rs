//! The secrets the config names but never holds: each comes from an environment variable
//! (`<name>_env`) or a file (`<name>_file`), exactly one of the two; and the TLS material
//! `[shared]` authenticates to Redis with (a CA, a client certificate and key).
//!
//! A file named by a relative path is looked up in `$CREDENTIALS_DIRECTORY` first (where
//! systemd's `LoadCredential=` puts it), then from the working directory. A file holding a
//! secret (a password, the client key) must not be readable by every user: such a file is a
//! config error, as sshd refuses a private key others can read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{err, ConfigError};

/// Where a path from the config is: in `$CREDENTIALS_DIRECTORY` if it is relative and
/// there, else as written.
pub fn locate(path: &Path) -> PathBuf {
    locate_in(
        std::env::var_os("CREDENTIALS_DIRECTORY")
            .as_deref()
            .map(Path::new),
        path,
    )
}

/// Where `path` is, with `credentials` as the credentials directory.
fn locate_in(credentials: Option<&Path>, path: &Path) -> PathBuf {
    if path.is_relative() {
        if let Some(candidate) = credentials.map(|dir| dir.join(path)).filter(|c| c.exists()) {
            return candidate;
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

/// A secret given by exactly one of `<name>_env` (a variable's name) and `<name>_file`, at
/// least `min` bytes long: None when neither is set. A file's one trailing line end is not
/// part of it (systemd credentials and Kubernetes secrets often end with one). No error
/// text holds the value.
pub fn secret(
    name: &str,
    env: Option<&str>,
    file: Option<&Path>,
    min: usize,
) -> Result<Option<String>, ConfigError> {
    let (env_key, file_key) = (format!("{name}_env"), format!("{name}_file"));
    let (key, source, value) = match (env, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => return Err(err(&env_key, format!("give {env_key} or {file_key}, not both"))),
        (Some(var), None) => {
            let value = std::env::var(var)
                .map_err(|_| err(&env_key, format!("environment variable {var} is not set")))?;
            (env_key, format!("${var}"), value)
        }
        (None, Some(path)) => {
            let bytes = read(&file_key, path, true)?;
            let text = String::from_utf8(bytes).map_err(|_| err(&file_key, "does not hold UTF-8 text"))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let value = text.strip_suffix('\r').unwrap_or(text).to_string();
            (file_key, locate(path).display().to_string(), value)
        }
    };
    if value.is_empty() {
        return Err(err(&key, format!("{source} is empty")));
    }
    if value.len() < min {
        return Err(err(&key, format!("{source} must hold at least {min} bytes")));
    }
    Ok(Some(value))
}

/// A password: a [`secret`] of any length but empty.
pub fn password(name: &str, env: Option<&str>, file: Option<&Path>) -> Result<Option<String>, ConfigError> {
    secret(name, env, file, 1)
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

    #[test]
    fn a_secret_names_both_keys_when_both_are_given_and_its_file_when_it_is_short() {
        let dir = tempfile::tempdir().unwrap();
        let ok = file(dir.path(), "token", "sixteen-bytes-or-more\r\n", 0o400);
        let e = secret("admin.token", Some("CARDGATE_TEST_ADMIN"), Some(&ok), 16).unwrap_err();
        assert_eq!(
            e.0,
            "admin.token_env: give admin.token_env or admin.token_file, not both"
        );
        let got = secret("admin.token", None, Some(&ok), 16).unwrap();
        assert_eq!(
            got.as_deref(),
            Some("sixteen-bytes-or-more"),
            "one line end is stripped"
        );
        let short = file(dir.path(), "short", "fifteen-bytes!!\n", 0o600);
        let e = secret("cache.hash_key", None, Some(&short), 16).unwrap_err();
        assert!(e.0.starts_with("cache.hash_key_file: "), "{e}");
        assert!(
            e.0.contains("at least 16 bytes") && !e.0.contains("fifteen"),
            "{e}"
        );
        let open = file(dir.path(), "open", "sixteen-bytes-or-more", 0o604);
        let e = secret("shared.encryption_key", None, Some(&open), 1).unwrap_err();
        assert!(e.0.starts_with("shared.encryption_key_file: "), "{e}");
        assert!(e.0.contains("readable by every user"), "{e}");
    }

    #[test]
    fn a_relative_name_is_looked_up_in_the_credentials_directory_first() {
        let creds = tempfile::tempdir().unwrap();
        let there = file(creds.path(), "admin-token", "x", 0o600);
        let relative = Path::new("admin-token");
        assert_eq!(locate_in(Some(creds.path()), relative), there);
        // Not there, or no directory: the name as written (from the working directory).
        assert_eq!(
            locate_in(Some(creds.path()), Path::new("other")),
            Path::new("other")
        );
        assert_eq!(locate_in(None, relative), relative);
        // An absolute path is never redirected.
        let absolute = creds.path().join("elsewhere");
        assert_eq!(locate_in(Some(creds.path()), &absolute), absolute);
    }
}
