//! Writes the man pages and shell completions of both tools from their clap
//! definitions, so what is installed can never disagree with `--help`:
//!
//!   synapse_compress_docgen OUT_DIR
//!
//! makes `OUT_DIR/man/<tool>.1` and `OUT_DIR/completions/{bash,zsh,fish}/`
//! (each under the file name its shell looks for). `scripts/package.sh` runs
//! it before `cargo deb`, whose assets take the files from there.
//!
//! The only place outside the tools themselves that names their argument
//! types: [`tools`].

use std::fs;
use std::io::Write;
use std::path::Path;

use clap::{Arg, Command, CommandFactory};
use clap_complete::Shell;
use roff::{bold, italic, roman, Roff};

/// A tool's command and the man page sections `--help` has no room for.
struct Tool {
    command: Command,
    /// The NAME line's few words (what `whatis` and `apropos` list): the
    /// command's `about` can be a whole paragraph, which DESCRIPTION holds.
    summary: &'static str,
    /// (section title, paragraphs); a paragraph starting with a bold term
    /// and a tab becomes a tagged paragraph (`.TP`).
    sections: Vec<(&'static str, Vec<&'static str>)>,
}

fn tools() -> Vec<Tool> {
    let logging = (
        "ENVIRONMENT",
        vec![
            "RUST_LOG\tLog level of the lines on standard error: error, warn, info (the default) or debug.",
            "PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY, PGCONNECT_TIMEOUT, PGAPPNAME\tWhat -p leaves out, as for psql (values in -p win).",
            "PGPASSFILE\tThe password file (default ~/.pgpass, ignored when group or others can read it).",
        ],
    );
    vec![
        Tool {
            command: synapse_compress_state::manual::ManualArgs::command(),
            summary: "compress the state of one room of a Synapse database",
            sections: vec![
                (
                    "EXIT STATUS",
                    vec![
                        "0\tThe room was compressed, or there was nothing worth writing (the summary says which).",
                        "1\tAn error, named in one line on standard error.",
                        "2\tThe command line was wrong.",
                        "75\tAnother compressor is working on the room (only with -c); try again later.",
                        "130, 143\tStopped by SIGINT (Ctrl-C) or SIGTERM between two phases or write batches; every group keeps its state, and the same command finishes the work.",
                    ],
                ),
                logging.clone(),
                ("SEE ALSO", vec!["synapse_auto_compressor(1), psql(1)"]),
            ],
        },
        Tool {
            command: synapse_auto_compressor::cli::AutoArgs::command(),
            summary: "compress the state of a whole Synapse database",
            sections: vec![
                (
                    "EXIT STATUS",
                    vec![
                        "0\tThe run finished; rooms that were busy or damaged are counted in the summary.",
                        "1\tAn error, named in one line on standard error.",
                        "2\tThe command line was wrong.",
                        "75\tAnother automatic run holds the database's lock; the next run carries on.",
                        "130, 143\tStopped by SIGINT (Ctrl-C) or SIGTERM after its last whole chunk, with its progress saved; the next run carries on.",
                    ],
                ),
                logging,
                (
                    "FILES",
                    vec![
                        "/etc/default/synapse-auto-compressor\tConnection, chunk size, chunk count and levels for the packaged service.",
                        "synapse-auto-compressor.service, synapse-auto-compressor.timer\tThe packaged systemd units: a nightly run, installed but not enabled (systemctl enable --now synapse-auto-compressor.timer).",
                    ],
                ),
                ("SEE ALSO", vec!["synapse_compress_state(1), systemd.timer(5), pgpass(5)"]),
            ],
        },
    ]
}

fn render_sections(sections: &[(&str, Vec<&str>)]) -> Roff {
    let mut roff = Roff::new();
    for (title, paragraphs) in sections {
        roff.control("SH", [*title]);
        for paragraph in paragraphs {
            match paragraph.split_once('\t') {
                Some((term, text)) => {
                    roff.control("TP", [])
                        .text([bold(term)])
                        .text([roman(text)]);
                }
                None => {
                    roff.control("PP", []).text([roman(*paragraph)]);
                }
            }
        }
    }
    roff
}

/// NAME and SYNOPSIS, as roff source. clap_mangen's own put the whole
/// `about` in NAME and list options without their values
/// (`[-c|--chunk-size]`); here NAME is the short summary and SYNOPSIS shows
/// each option once, by its short form when it has one, with its value
/// placeholder (`-c CHUNK_SIZE`), optional ones in brackets, and `-h` and
/// `-V` on a line of their own. It uses the man macros made for it (`.SY`,
/// `.OP`, `.YS`), and a line never breaks between an option and its value
/// nor inside an option's name.
fn name_and_synopsis(tool: &Tool) -> String {
    // Built, the command has its help and version arguments too.
    let mut command = tool.command.clone();
    command.build();
    let name = command.get_name();
    let mut roff = Roff::new();
    roff.control("SH", ["NAME"])
        .text([roman(format!("{name} - {}", tool.summary))]);
    roff.control("SH", ["SYNOPSIS"]);
    let (help, args): (Vec<&Arg>, Vec<&Arg>) = command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set())
        .partition(|arg| ["help", "version"].contains(&arg.get_id().as_str()));
    roff.control("SY", [name]);
    for arg in args {
        let (flag, value) = synopsis_arg(arg);
        if arg.is_required_set() {
            // No brackets; the no-break space becomes roff's `\~` below.
            let mut words = vec![bold(flag)];
            words.extend(value.map(|value| italic(format!("{NO_BREAK}{value}"))));
            roff.text(words);
        } else {
            // Macro arguments are not escaped by roff-rs: a plain `-` could
            // be typeset as a hyphen, and a line broken after it.
            let flag = flag.replace('-', "\\-");
            roff.control(
                "OP",
                [Some(flag.as_str()), value.as_deref()]
                    .into_iter()
                    .flatten(),
            );
        }
    }
    roff.control("YS", []);
    roff.control("SY", [name]);
    for (i, arg) in help.into_iter().enumerate() {
        if i > 0 {
            roff.text([roman("|")]);
        }
        roff.text([bold(synopsis_arg(arg).0)]);
    }
    roff.control("YS", []);
    roff.render().replace(NO_BREAK, "\\~")
}

/// Stands for roff's unbreakable space (`\~`), which roff-rs would escape.
const NO_BREAK: char = '\u{a0}';

/// The option's short form if it has one (`-c`), else its long one
/// (`--dry-run`), and its value placeholder if it takes one.
fn synopsis_arg(arg: &Arg) -> (String, Option<String>) {
    let flag = match (arg.get_short(), arg.get_long()) {
        (Some(short), _) => format!("-{short}"),
        (None, Some(long)) => format!("--{long}"),
        (None, None) => arg.get_id().to_string(),
    };
    let value = arg.get_action().takes_values().then(|| {
        arg.get_value_names()
            .map(|names| names.join(" "))
            .unwrap_or_else(|| arg.get_id().to_string().to_uppercase())
    });
    (flag, value)
}

fn man_page(tool: &Tool) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(tool.command.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    page.extend_from_slice(name_and_synopsis(tool).as_bytes());
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    render_sections(&tool.sections).to_writer(&mut page)?;
    man.render_version_section(&mut page)?;
    Ok(page)
}

fn write(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::File::create(path)?.write_all(contents)
}

fn generate(out: &Path) -> std::io::Result<()> {
    for mut tool in tools() {
        let name = tool.command.get_name().to_owned();
        write(&out.join(format!("man/{name}.1")), &man_page(&tool)?)?;
        for (shell, file) in [
            (Shell::Bash, name.clone()),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut tool.command, &name, &mut script);
            write(&out.join(format!("completions/{shell}/{file}")), &script)?;
        }
    }
    Ok(())
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("error: usage: synapse_compress_docgen OUT_DIR");
        std::process::exit(2);
    };
    if let Err(err) = generate(Path::new(&out)) {
        eprintln!(
            "error: cannot write to {}: {err}",
            Path::new(&out).display()
        );
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of section `title` of a rendered page.
    fn section(page: &str, title: &str) -> String {
        let start = page
            .find(&format!(".SH {title}\n"))
            .unwrap_or_else(|| panic!("no {title} section"));
        let body = &page[start + title.len() + 5..];
        body[..body.find(".SH ").unwrap_or(body.len())].to_owned()
    }

    #[test]
    fn the_synopsis_shows_every_option_with_its_value() {
        for tool in tools() {
            let page = String::from_utf8(man_page(&tool).unwrap()).unwrap();
            let synopsis = section(&page, "SYNOPSIS");
            let mut command = tool.command.clone();
            command.build();
            for arg in command.get_arguments().filter(|arg| !arg.is_hide_set()) {
                let (flag, value) = synopsis_arg(arg);
                let flag = flag.replace('-', "\\-");
                let shown = match &value {
                    // `.OP \-c VALUE` or `\fB\-c\fR\fI\~VALUE\fR`.
                    Some(value) => {
                        synopsis.contains(&format!(".OP {flag} {value}\n"))
                            || synopsis.contains(&format!("\\fB{flag}\\fR\\fI\\~{value}\\fR"))
                    }
                    None => {
                        synopsis.contains(&format!(".OP {flag}\n"))
                            || synopsis.contains(&format!("\\fB{flag}\\fR\n"))
                    }
                };
                assert!(shown, "{flag} {value:?} missing from:\n{synopsis}");
            }
        }
    }

    #[test]
    fn the_name_line_is_the_short_summary() {
        for tool in tools() {
            let page = String::from_utf8(man_page(&tool).unwrap()).unwrap();
            let name = section(&page, "NAME");
            let expected = format!("{} \\- {}", tool.command.get_name(), tool.summary);
            // The line whatis lists: the name and a summary that fits a terminal.
            assert!(name.lines().any(|line| line == expected), "{name}");
            assert!(expected.len() <= 80, "{expected}");
        }
    }
}
