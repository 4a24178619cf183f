//! `phoenix completion bash|zsh|fish|powershell|elvish`: the shell completion script
//! for the whole command tree, made by `clap_complete` from the same definitions
//! that parse the command line. It needs no API and no configuration.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::commands::Cli;
use crate::output;

pub const HELP: &str = "\
Install (then open a new shell):
  bash:  phoenix completion bash > /etc/bash_completion.d/phoenix
         or, for this shell only: source <(phoenix completion bash)
  zsh:   phoenix completion zsh > \"${fpath[1]}/_phoenix\"
  fish:  phoenix completion fish > ~/.config/fish/completions/phoenix.fish
  powershell:  phoenix completion powershell | Out-String | Invoke-Expression
  elvish:      phoenix completion elvish > ~/.config/elvish/lib/phoenix.elv";

/// Prints the completion script of `shell` to stdout.
pub fn run(shell: Shell) -> anyhow::Result<()> {
    output::print(&script(shell))?;
    Ok(())
}

fn script(shell: Shell) -> String {
    let mut command = Cli::command();
    let mut bytes = Vec::new();
    clap_complete::generate(shell, &mut command, "phoenix", &mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_that_knows_the_nouns() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::PowerShell,
            Shell::Elvish,
        ] {
            let script = script(shell);
            assert!(script.contains("phoenix"), "{shell}");
            for noun in ["experiment", "task", "sync", "completion"] {
                assert!(script.contains(noun), "{shell} lacks {noun}");
            }
        }
    }
}
