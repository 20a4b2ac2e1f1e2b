//! `aperture man` and `aperture completions`: the manual pages and the shell completion
//! scripts, generated from the command-line definition in [`crate::cli`] so that they always
//! describe the options this binary has.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::control::exit_status;

/// The command tree the pages describe: built (so subcommands are named `aperture-run` and
/// so on), without clap's `help` subcommand, which needs no page.
fn documented_command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

fn page(cmd: clap::Command) -> clap_mangen::Man {
    let source = format!("aperture {}", env!("CARGO_PKG_VERSION"));
    clap_mangen::Man::new(cmd).source(source).manual("Aperture Manual")
}

/// `aperture.1`, in roff.
pub fn main_page() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    page(documented_command()).render(&mut out)?;
    Ok(out)
}

/// The page of subcommand `name` (`aperture-run.1` for `run`), in roff; `None` if there is
/// no such subcommand.
pub fn subcommand_page(name: &str) -> Option<std::io::Result<Vec<u8>>> {
    let cmd = documented_command().find_subcommand(name)?.clone();
    let mut out = Vec::new();
    Some(page(cmd).render(&mut out).map(|()| out))
}

/// Writes `aperture.1` and one page per (nested) subcommand, e.g. `aperture-run.1`, into
/// `dir`, creating it if needed; returns the files written.
pub fn write_man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn write(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let subs: Vec<clap::Command> =
            cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
        written.push(page(cmd).generate_to(dir)?);
        for sub in subs {
            write(sub, dir, written)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    write(documented_command(), dir, &mut written)?;
    Ok(written)
}

/// The completion script for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "aperture", &mut out);
    out
}

/// Writes `bytes` to stdout; a closed pipe (`aperture man | head`) is not an error.
fn to_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// `aperture man [--out DIR]`; returns the exit status.
pub fn run_man(args: &ManArgs) -> i32 {
    let outcome = match &args.out {
        None => main_page().and_then(|page| to_stdout(&page)).map_err(|e| format!("man: {e}")),
        Some(dir) => write_man_pages(dir)
            .map(|written| {
                for path in written {
                    eprintln!("aperture: wrote {}", path.display());
                }
            })
            .map_err(|e| format!("man --out {}: {e}", dir.display())),
    };
    match outcome {
        Ok(()) => exit_status::POWER_OFF,
        Err(message) => {
            eprintln!("aperture: error: {message}");
            exit_status::VMM_ERROR
        }
    }
}

/// `aperture completions SHELL`; returns the exit status.
pub fn run_completions(args: &CompletionsArgs) -> i32 {
    match to_stdout(&completions(args.shell)) {
        Ok(()) => exit_status::POWER_OFF,
        Err(e) => {
            eprintln!("aperture: error: completions: {e}");
            exit_status::VMM_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    /// How roff writes `--name`: each hyphen escaped.
    fn roff_long(name: &str) -> String {
        format!("--{name}").replace('-', "\\-")
    }

    #[test]
    fn the_run_page_mentions_every_run_option() {
        let page = text(subcommand_page("run").unwrap().unwrap());
        assert!(page.contains(".TH aperture-run 1 "), "{page}");
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").unwrap();
        let longs: Vec<&str> = run.get_arguments().filter_map(|a| a.get_long()).collect();
        assert!(longs.contains(&"kernel") && longs.contains(&"device"), "{longs:?}");
        for long in longs {
            assert!(page.contains(&roff_long(long)), "the run page lacks --{long}:\n{page}");
        }
        // The examples and exit statuses come along.
        assert!(page.contains("Exit statuses"), "{page}");
    }

    #[test]
    fn the_main_page_lists_every_subcommand() {
        let page = text(main_page().unwrap());
        assert!(page.contains(".TH aperture 1 "), "{page}");
        assert!(page.contains(&roff_long("verbose")), "{page}");
        for sub in Cli::command().get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = sub.get_name();
            if name != "help" {
                assert!(page.contains(&format!("aperture\\-{name}(1)")), "no {name}:\n{page}");
            }
        }
    }

    #[test]
    fn man_out_writes_one_page_per_subcommand() {
        let dir = std::env::temp_dir().join(format!("aperture-man-{}", std::process::id()));
        let written = write_man_pages(&dir).unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names.first().map(String::as_str), Some("aperture.1"), "{names:?}");
        for expected in ["aperture-run.1", "aperture-man.1", "aperture-completions.1"] {
            assert!(names.iter().any(|n| n == expected), "no {expected} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        for path in &written {
            assert!(std::fs::read_to_string(path).unwrap().starts_with(".ie"), "{path:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn completions_know_the_options() {
        let bash = text(completions(Shell::Bash));
        assert!(bash.contains("--device"), "{bash}");
        assert!(bash.contains("--kernel") && bash.contains("aperture"), "{bash}");
        for shell in [Shell::Zsh, Shell::Fish, Shell::Elvish, Shell::PowerShell] {
            let script = text(completions(shell));
            assert!(script.contains("device"), "{shell}: {script}");
        }
    }
}
