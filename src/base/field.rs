//! Checks shared by the validation of every cordon.toml section.

use std::path::{Path, PathBuf};

/// A path field of cordon.toml, resolved against `base` (the config file's directory) when
/// relative. An empty path is a problem, pushed onto `problems` naming `field`.
pub fn config_path(field: &str, path: PathBuf, base: &Path, problems: &mut Vec<String>) -> PathBuf {
    if path.as_os_str().is_empty() {
        problems.push(format!("{field}: must not be empty"));
    }
    if path.is_absolute() { path } else { base.join(path) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_taken_from_the_config_directory_and_empty_ones_refused() {
        let mut problems = Vec::new();
        let base = Path::new("/etc/cordon");
        assert_eq!(
            config_path("policy", "policy.toml".into(), base, &mut problems),
            base.join("policy.toml")
        );
        assert_eq!(
            config_path("policy", "/srv/p.toml".into(), base, &mut problems),
            Path::new("/srv/p.toml")
        );
        assert!(problems.is_empty());
        config_path("tls.dir", PathBuf::new(), base, &mut problems);
        assert_eq!(problems, ["tls.dir: must not be empty"]);
    }
}
