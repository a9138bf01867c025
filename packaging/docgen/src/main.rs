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

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use roff::{bold, roman, Roff};

/// A tool's command and the man page sections `--help` has no room for.
struct Tool {
    command: Command,
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

fn man_page(tool: &Tool) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(tool.command.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
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
