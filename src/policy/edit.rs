//! Changing a service's mode in `policy.toml` (`cordon mode`), keeping every comment and the order
//! of everything else. The preflight that checks an enforce flip is [`super::readiness()`], run by [`super::flip()`].

use std::path::Path;

use super::{Mode, Policy, PolicyError};

/// Sets `service`'s mode in the policy text and returns the new text, validated. `[modes]` is
/// created if missing; comments and order are kept.
pub fn with_mode(text: &str, origin: &Path, service: &str, mode: Mode) -> Result<String, PolicyError> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        PolicyError::Syntax { path: origin.to_owned(), message: e.to_string().trim_end().to_string() }
    })?;
    if !doc.contains_key("modes") {
        let mut table = toml_edit::Table::new();
        // [modes] goes first, where readers look for it; existing tables keep their positions.
        table.set_position(0);
        doc.insert("modes", toml_edit::Item::Table(table));
    }
    let modes = doc["modes"].as_table_like_mut().ok_or_else(|| PolicyError::Invalid {
        path: origin.to_owned(),
        problems: vec!["modes is not a table".into()],
    })?;
    match modes.get_mut(service).and_then(|i| i.as_value_mut()) {
        // Replace the value only, keeping the comment that may follow it.
        Some(v) => {
            let decor = v.decor().clone();
            *v = toml_edit::Value::from(mode.as_str());
            *v.decor_mut() = decor;
        }
        None => {
            modes.insert(service, toml_edit::value(mode.as_str()));
        }
    }
    let new = doc.to_string();
    Policy::parse(&new, origin)?;
    Ok(new)
}

/// Sets `service`'s mode in the policy file, atomically (temporary file, fsync, rename).
pub fn set_mode(path: &Path, service: &str, mode: Mode) -> Result<(), PolicyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| PolicyError::Read { path: path.to_owned(), source })?;
    Policy::parse(&text, path)?;
    let new = with_mode(&text, path, service, mode)?;
    let perms =
        std::fs::metadata(path).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    crate::pki::files::write_atomic(path, new.as_bytes(), perms.unwrap_or(0o644))
        .map_err(|e| PolicyError::Write { path: path.to_owned(), message: e.to_string() })
}
