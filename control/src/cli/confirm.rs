//! Asking before destructive commands, the way Headscale does: a yes/no
//! question on a terminal, skipped with `--force`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;

/// How a command treats a standard input that is not a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unattended {
    /// Go ahead: scripts deleting nodes should not need extra flags.
    Proceed,
    /// Refuse unless `--force`: destroying a user takes its keys and nodes with it.
    RequireForce,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decision {
    Proceed,
    Ask,
    Refuse,
}

pub(super) fn decide(force: bool, stdin_is_terminal: bool, unattended: Unattended) -> Decision {
    match (force, stdin_is_terminal, unattended) {
        (true, _, _) => Decision::Proceed,
        (false, true, _) => Decision::Ask,
        (false, false, Unattended::Proceed) => Decision::Proceed,
        (false, false, Unattended::RequireForce) => Decision::Refuse,
    }
}

pub(super) fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Asks `question [y/N]` on stderr (stdout stays clean for `-o json`) and
/// reads the answer from stdin; anything but yes is no.
pub(super) fn ask(question: &str) -> anyhow::Result<bool> {
    let stderr = std::io::stderr();
    let stdin = std::io::stdin();
    ask_with(question, stdin.lock(), &mut stderr.lock())
}

fn ask_with(question: &str, input: impl BufRead, prompt: &mut impl Write) -> anyhow::Result<bool> {
    write!(prompt, "{question} [y/N] ")
        .and_then(|()| prompt.flush())
        .context("writing the prompt")?;
    let mut answer = String::new();
    // Reading stops at the first newline, so a long or endless paste cannot pile up.
    input
        .take(1024)
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(is_yes(&answer))
}

pub(super) fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn force_always_proceeds_and_terminals_are_asked() {
        for unattended in [Unattended::Proceed, Unattended::RequireForce] {
            assert_eq!(decide(true, true, unattended), Decision::Proceed);
            assert_eq!(decide(true, false, unattended), Decision::Proceed);
            assert_eq!(decide(false, true, unattended), Decision::Ask);
        }
    }

    #[test]
    fn without_a_terminal_only_user_destroy_refuses() {
        assert_eq!(decide(false, false, Unattended::Proceed), Decision::Proceed);
        assert_eq!(
            decide(false, false, Unattended::RequireForce),
            Decision::Refuse
        );
    }

    #[test]
    fn answers() {
        for yes in ["y", "Y", "yes", " YES \n"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yep", "y e s"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }

    #[test]
    fn prompt_goes_to_the_prompt_stream() {
        let mut prompt = Vec::new();
        let yes = ask_with("Remove?", &b"y\n"[..], &mut prompt).unwrap();
        assert!(yes);
        assert_eq!(prompt, b"Remove? [y/N] ");
        assert!(!ask_with("Remove?", &b""[..], &mut Vec::new()).unwrap());
    }
}
