//! `phoenix man [--dir DIR]`: man pages for the whole command tree, made by
//! `clap_mangen` from the same definitions that parse the command line (so they
//! cannot drift from `--help`). Needs no API and no configuration.

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory;

use crate::commands::Cli;
use crate::output;

pub const HELP: &str = "\
Examples:
  phoenix man | man -l -                        read phoenix(1) now
  phoenix man --dir /usr/local/share/man/man1   one page per command: phoenix.1,
                                                phoenix-experiment-create.1, ...

Each page holds what that command's --help says, examples included.";

pub fn run(dir: Option<&Path>) -> anyhow::Result<()> {
    let command = Cli::command();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page)?;
        return Ok(output::print(&String::from_utf8_lossy(&page))?);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("cannot write the man pages to {}", dir.display()))?;
    let pages = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".1"))
        .count();
    eprintln!("wrote {pages} man pages to {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_a_page_with_its_examples() {
        let dir = tempfile::tempdir().unwrap();
        run(Some(dir.path())).unwrap();
        let page = std::fs::read_to_string(dir.path().join("phoenix-experiment-create.1")).unwrap();
        assert!(page.contains("phoenix experiment create"), "{page}");
        assert!(page.contains("topk\\-web.yaml"), "{page}");
        let diff = std::fs::read_to_string(dir.path().join("phoenix-diff.1")).unwrap();
        assert!(diff.contains("kubectl diff"), "{diff}");
        assert!(dir.path().join("phoenix.1").exists());
    }
}
