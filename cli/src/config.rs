//! Where the CLI finds the API and its token.
//!
//! Each setting is taken from the first source that has it: the command-line flag
//! (`--api-url`, `--token-file`, `--ca-file`), then the environment
//! (`PHOENIX_API_URL`, `PHOENIX_TOKEN`, `PHOENIX_CA_FILE`), then the config file, then
//! the default. The config file is
//! `$PHOENIX_CONFIG`, or `~/.config/phoenix/config.yaml` when that is unset:
//!
//! ```yaml
//! apiUrl: https://phoenix.example.internal
//! token: 0123abcd...
//! caFile: /etc/phoenix/ca.pem   # a private CA; only it is trusted then
//! ```
//!
//! The token is never a flag (command lines are visible to every user): the flag
//! `--token-file` names a file holding it.

use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the API listens when nothing says otherwise.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8080";
pub const ENV_API_URL: &str = "PHOENIX_API_URL";
pub const ENV_TOKEN: &str = "PHOENIX_TOKEN";
pub const ENV_CONFIG: &str = "PHOENIX_CONFIG";
pub const ENV_CA_FILE: &str = "PHOENIX_CA_FILE";

/// The settings one source provides; `None` means "this source does not say".
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub api_url: Option<String>,
    pub token: Option<String>,
    /// PEM file of a private CA that signed the api's certificate.
    pub ca_file: Option<String>,
}

impl Settings {
    /// Reads `PHOENIX_API_URL` and `PHOENIX_TOKEN` through `lookup` (the process
    /// environment in real use, a map in tests).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            api_url: lookup(ENV_API_URL),
            token: lookup(ENV_TOKEN),
            ca_file: lookup(ENV_CA_FILE),
        }
    }
}

/// The settings the CLI runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Base URL without a trailing `/`, e.g. `http://127.0.0.1:8080`.
    pub api_url: String,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is the error's `source`; `main` prints the chain.
    #[error("cannot read config file {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "config file {} is not valid (it may hold `apiUrl` and `token`): {message}",
        path.display()
    )]
    Parse { path: PathBuf, message: String },
    #[error("API URL `{url}` is not usable: {reason}")]
    ApiUrl { url: String, reason: String },
}

impl Config {
    /// Loads the configuration of this process: `flags` from the command line, the
    /// environment, and the config file.
    pub fn load(flags: Settings) -> Result<Config, ConfigError> {
        let lookup = |name: &str| std::env::var(name).ok();
        let env = Settings::from_env(lookup);
        let file = match config_file_path(lookup) {
            Some((path, required)) => read_config_file(&path, required)?,
            None => Settings::default(),
        };
        Config::layer(flags, env, file)
    }

    /// Takes each setting from the first of `flags`, `env`, `file` that has a
    /// non-empty value, and checks the result.
    pub fn layer(flags: Settings, env: Settings, file: Settings) -> Result<Config, ConfigError> {
        let api_url = first_non_empty([flags.api_url, env.api_url, file.api_url])
            .unwrap_or_else(|| DEFAULT_API_URL.to_string());
        let token = first_non_empty([flags.token, env.token, file.token]);
        let ca_file =
            first_non_empty([flags.ca_file, env.ca_file, file.ca_file]).map(PathBuf::from);
        Ok(Config {
            api_url: check_api_url(&api_url)?,
            token,
            ca_file,
        })
    }
}

/// An empty value (`PHOENIX_TOKEN=`) counts as not set, so it does not hide a
/// lower layer.
fn first_non_empty(candidates: [Option<String>; 3]) -> Option<String> {
    candidates
        .into_iter()
        .flatten()
        .map(|value| value.trim().to_string())
        .find(|value| !value.is_empty())
}

/// The config file to read, and whether it must exist: a file named by
/// `PHOENIX_CONFIG` must; the default one may be absent.
pub fn config_file_path(lookup: impl Fn(&str) -> Option<String>) -> Option<(PathBuf, bool)> {
    if let Some(path) = lookup(ENV_CONFIG).filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(path), true));
    }
    let home = lookup("HOME").filter(|h| !h.is_empty())?;
    Some((Path::new(&home).join(".config/phoenix/config.yaml"), false))
}

/// Reads a config file. A missing file is an error only when `required`.
pub fn read_config_file(path: &Path, required: bool) -> Result<Settings, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound && !required => {
            return Ok(Settings::default());
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    parse_config(&text).map_err(|message| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses the text of a config file; an empty file is an empty config.
pub fn parse_config(text: &str) -> Result<Settings, String> {
    // An empty or comment-only document is YAML null.
    serde_saphyr::from_str::<Option<Settings>>(text)
        .map(Option::unwrap_or_default)
        .map_err(|err| err.to_string())
}

/// Accepts `http(s)://host[:port][/prefix]` and returns it without a trailing `/`.
fn check_api_url(url: &str) -> Result<String, ConfigError> {
    let error = |reason: &str| ConfigError::ApiUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = url.trim().trim_end_matches('/');
    if !trimmed.starts_with("http://") && !trimmed.starts_with("https://") {
        return Err(error(
            "it must start with http:// or https://, e.g. https://phoenix.example.internal",
        ));
    }
    match reqwest::Url::parse(trimmed) {
        Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => {}
        Ok(_) => return Err(error("it names no host")),
        Err(err) => return Err(error(&err.to_string())),
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(api_url: Option<&str>, token: Option<&str>) -> Settings {
        Settings {
            api_url: api_url.map(String::from),
            token: token.map(String::from),
            ca_file: None,
        }
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let flags = settings(Some("http://flag:1"), Some("flag-token"));
        let env = settings(Some("http://env:2"), Some("env-token"));
        let file = settings(Some("http://file:3"), Some("file-token"));

        let all = Config::layer(flags.clone(), env.clone(), file.clone()).unwrap();
        assert_eq!(all.api_url, "http://flag:1");
        assert_eq!(all.token.as_deref(), Some("flag-token"));

        let no_flags = Config::layer(Settings::default(), env, file.clone()).unwrap();
        assert_eq!(no_flags.api_url, "http://env:2");
        assert_eq!(no_flags.token.as_deref(), Some("env-token"));

        let file_only = Config::layer(Settings::default(), Settings::default(), file).unwrap();
        assert_eq!(file_only.api_url, "http://file:3");
        assert_eq!(file_only.token.as_deref(), Some("file-token"));
    }

    #[test]
    fn each_setting_is_layered_on_its_own() {
        let flags = settings(None, Some("flag-token"));
        let env = settings(Some("http://env:2"), None);
        let config = Config::layer(flags, env, Settings::default()).unwrap();
        assert_eq!(config.api_url, "http://env:2");
        assert_eq!(config.token.as_deref(), Some("flag-token"));
    }

    #[test]
    fn defaults_apply_and_empty_values_do_not_count() {
        let env = settings(Some(""), Some("  "));
        let file = settings(None, Some("file-token"));
        let config = Config::layer(Settings::default(), env, file).unwrap();
        assert_eq!(config.api_url, DEFAULT_API_URL);
        assert_eq!(config.token.as_deref(), Some("file-token"));

        let none = Config::layer(
            Settings::default(),
            Settings::default(),
            Settings::default(),
        )
        .unwrap();
        assert_eq!(none.token, None);
    }

    #[test]
    fn api_urls_are_checked_and_trimmed() {
        let url = |u: &str| {
            Config::layer(
                settings(Some(u), None),
                Settings::default(),
                Settings::default(),
            )
        };
        assert_eq!(url("http://api:8080/").unwrap().api_url, "http://api:8080");
        assert_eq!(
            url("http://api/phoenix/").unwrap().api_url,
            "http://api/phoenix"
        );
        assert_eq!(url("https://api/").unwrap().api_url, "https://api");
        for bad in ["api:8080", "http://", "ftp://api"] {
            let err = url(bad).unwrap_err();
            assert!(matches!(err, ConfigError::ApiUrl { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn env_is_read_through_the_lookup() {
        let env = Settings::from_env(|name| match name {
            ENV_API_URL => Some("http://env:2".into()),
            _ => None,
        });
        assert_eq!(env, settings(Some("http://env:2"), None));
    }

    #[test]
    fn config_file_location() {
        let explicit = config_file_path(|name| match name {
            ENV_CONFIG => Some("/etc/phoenix.yaml".into()),
            "HOME" => Some("/home/me".into()),
            _ => None,
        });
        assert_eq!(explicit, Some((PathBuf::from("/etc/phoenix.yaml"), true)));

        let default = config_file_path(|name| (name == "HOME").then(|| "/home/me".into()));
        assert_eq!(
            default,
            Some((PathBuf::from("/home/me/.config/phoenix/config.yaml"), false))
        );
        assert_eq!(config_file_path(|_| None), None);
    }

    #[test]
    fn config_files_parse() {
        assert_eq!(
            parse_config("apiUrl: http://file:3\ntoken: abc\n").unwrap(),
            settings(Some("http://file:3"), Some("abc"))
        );
        assert_eq!(parse_config("").unwrap(), Settings::default());
        assert_eq!(
            parse_config("# nothing yet\n").unwrap(),
            Settings::default()
        );
        let typo = parse_config("api_url: http://file:3\n").unwrap_err();
        assert!(typo.contains("api_url"), "{typo}");
    }

    #[test]
    fn a_missing_file_matters_only_when_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        assert_eq!(
            read_config_file(&missing, false).unwrap(),
            Settings::default()
        );
        let err = read_config_file(&missing, true).unwrap_err();
        assert!(err.to_string().contains("nope.yaml"), "{err}");
    }
}
