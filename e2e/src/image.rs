//! What each Phoenix image holds, read from `docker/Dockerfile`, the one place that
//! defines it: for a target (`api`, `reconciler`, `agent`) the files its stage
//! copies in (with the binaries they are built from on this machine), its `ENV`,
//! `USER` and `ENTRYPOINT`. The kubelet harness (`kubelet`) runs a pod's container
//! with exactly these, so a binary the image does not copy in is not there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One stage of the Dockerfile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stage {
    pub name: String,
    /// `COPY --from=<stage> <source>... <dest>`: (stage, source path, path in the image).
    pub copies: Vec<(String, String, String)>,
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// An image as the harness runs it: files (path in the image → file on this
/// machine), environment, user and entrypoint.
#[derive(Clone, Debug)]
pub struct Image {
    pub target: String,
    pub files: BTreeMap<String, PathBuf>,
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// Parses the instructions the Phoenix Dockerfile uses (FROM … AS, COPY --from, ENV
/// key=value, USER, ENTRYPOINT/CMD in JSON form; RUN, WORKDIR, EXPOSE, ARG are
/// build-time only). Anything else is an error naming the line, so a new kind of
/// instruction is not silently ignored.
pub fn parse_dockerfile(text: &str) -> Result<Vec<Stage>, String> {
    let mut stages: Vec<Stage> = Vec::new();
    for (number, line) in logical_lines(text) {
        let (instruction, rest) = line
            .split_once(char::is_whitespace)
            .map(|(i, r)| (i.to_ascii_uppercase(), r.trim()))
            .unwrap_or_else(|| (line.to_ascii_uppercase(), ""));
        let at = |what: &str| format!("docker/Dockerfile line {number}: {what}: {line}");
        if instruction == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => return Err(at("a FROM without `AS <name>`")),
            };
            stages.push(Stage {
                name,
                ..Stage::default()
            });
            continue;
        }
        if instruction == "ARG" {
            continue;
        }
        let stage = stages
            .last_mut()
            .ok_or_else(|| at("an instruction before the first FROM"))?;
        match instruction.as_str() {
            "RUN" | "WORKDIR" | "EXPOSE" => {}
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let Some(from) = words.first().and_then(|w| w.strip_prefix("--from=")) else {
                    // Copies from the build context only feed build stages.
                    continue;
                };
                let (dest, sources) = words[1..]
                    .split_last()
                    .ok_or_else(|| at("a COPY without a destination"))?;
                for source in sources {
                    let target = if dest.ends_with('/') {
                        let base = Path::new(source)
                            .file_name()
                            .ok_or_else(|| at("a COPY source without a file name"))?;
                        format!("{dest}{}", base.to_string_lossy())
                    } else {
                        dest.to_string()
                    };
                    stage
                        .copies
                        .push((from.to_string(), source.to_string(), target));
                }
            }
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (key, value) = pair
                        .split_once('=')
                        .ok_or_else(|| at("an ENV that is not key=value"))?;
                    stage.env.push((key.to_string(), value.to_string()));
                }
            }
            "USER" => stage.user = Some(rest.to_string()),
            "ENTRYPOINT" => {
                stage.entrypoint =
                    serde_json::from_str(rest).map_err(|_| at("an ENTRYPOINT not in JSON form"))?;
            }
            "CMD" => {
                stage.cmd = serde_json::from_str(rest).map_err(|_| at("a CMD not in JSON form"))?;
            }
            _ => return Err(at("an instruction the harness does not know")),
        }
    }
    Ok(stages)
}

/// Lines with `\` continuations joined and comments and blank lines dropped, each
/// with the number of its first line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if current.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if current.is_some() && trimmed.starts_with('#') {
            continue;
        }
        let (continued, piece) = match trimmed.strip_suffix('\\') {
            Some(piece) => (true, piece.trim_end()),
            None => (false, trimmed),
        };
        let entry = current.get_or_insert_with(|| (index + 1, String::new()));
        if !entry.1.is_empty() {
            entry.1.push(' ');
        }
        entry.1.push_str(piece);
        if !continued {
            out.extend(current.take());
        }
    }
    out.extend(current);
    out
}

/// The image of `target`, its copied files mapped to the binaries built on this
/// machine: `rust-build`'s `/out/<name>` is the workspace binary `<name>`,
/// `collector-build`'s `/otelcol-phoenix` the Phoenix collector.
pub fn image(stages: &[Stage], target: &str) -> Result<Image, String> {
    let stage = stages
        .iter()
        .find(|s| s.name == target)
        .ok_or_else(|| format!("docker/Dockerfile has no stage `{target}`"))?;
    let mut files = BTreeMap::new();
    for (from, source, dest) in &stage.copies {
        let host = match (from.as_str(), source.as_str()) {
            ("rust-build", source) if source.starts_with("/out/") => {
                crate::bins::binary(&source["/out/".len()..])
            }
            ("collector-build", "/otelcol-phoenix") => crate::bins::collector(),
            _ => {
                return Err(format!(
                    "stage `{target}` copies {source} from `{from}`, which the harness cannot build"
                ));
            }
        };
        files.insert(dest.clone(), host);
    }
    Ok(Image {
        target: target.to_string(),
        files,
        env: stage.env.clone(),
        user: stage.user.clone(),
        entrypoint: stage.entrypoint.clone(),
        cmd: stage.cmd.clone(),
    })
}

/// The Phoenix images of `docker/Dockerfile`, by target.
pub fn phoenix_images() -> Result<BTreeMap<String, Image>, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/Dockerfile");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let stages = parse_dockerfile(&text)?;
    let mut images = BTreeMap::new();
    for target in ["api", "reconciler", "agent"] {
        images.insert(target.to_string(), image(&stages, target)?);
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phoenix_dockerfile_parses() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/Dockerfile"),
        )
        .unwrap();
        let stages = parse_dockerfile(&text).unwrap();
        let api = stages.iter().find(|s| s.name == "api").unwrap();
        assert!(
            api.copies
                .iter()
                .any(|(_, _, dest)| dest == "/usr/local/bin/phoenix-api")
        );
        assert_eq!(api.entrypoint, ["/usr/local/bin/phoenix-api"]);
        assert!(api.env.iter().any(|(k, _)| k == "PHOENIX_API_LISTEN"));
        let agent = stages.iter().find(|s| s.name == "agent").unwrap();
        assert!(
            agent
                .copies
                .iter()
                .any(|(from, source, dest)| from == "collector-build"
                    && source == "/otelcol-phoenix"
                    && dest == "/usr/local/bin/otelcol-phoenix")
        );
        assert_eq!(agent.user.as_deref(), Some("0:0"));
        assert!(
            agent
                .env
                .iter()
                .any(|(k, v)| k == "PHOENIX_STATE_DIR" && v == "/var/lib/phoenix-agent")
        );
    }

    #[test]
    fn an_unknown_instruction_is_an_error() {
        let err = parse_dockerfile("FROM x AS a\nHEALTHCHECK CMD true\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let err = parse_dockerfile("FROM x AS a\nENV A B\n").unwrap_err();
        assert!(err.contains("key=value"), "{err}");
    }
}
