//! Build-time generator of the man page and shell completions from the clap definition
//! (`vhost_user_scsi::config::cli::Args`), so they can never drift from `--help`.
//!
//! Not installed: packaging builds it with `--features gen-docs` (debian/rules, the RPM spec,
//! tests/packaging.sh) and runs it once:
//!
//! ```text
//! vhost-user-scsi-gen-docs OUTDIR
//! ```
//!
//! writes `OUTDIR/vhost-user-scsi.8` and `OUTDIR/completions/{vhost-user-scsi.bash,
//! _vhost-user-scsi, vhost-user-scsi.fish}`. A separate feature-gated binary keeps the daemon
//! free of man-page code and of hidden options.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::CommandFactory;
use clap_complete::Shell;
use vhost_user_scsi::config::{cli::Args, print_capabilities as capabilities};

/// Man page section: a daemon started by the administrator (or systemd), not by users.
const SECTION: &str = "8";

fn man_page(out: &mut Vec<u8>) -> io::Result<()> {
    let cmd = Args::command();
    let man = clap_mangen::Man::new(cmd.clone()).section(SECTION);
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    // The LUN syntax and the rest of `after_help`, as --help prints it.
    if let Some(after) = cmd.get_after_help() {
        writeln!(out, ".SH \"LUN SYNTAX\"")?;
        writeln!(out, ".nf")?;
        for line in after.to_string().lines() {
            // roff: a leading dot or quote starts a request; backslashes are escapes.
            let line = line.replace('\\', "\\e");
            if line.starts_with('.') || line.starts_with('\'') {
                write!(out, "\\&")?;
            }
            writeln!(out, "{line}")?;
        }
        writeln!(out, ".fi")?;
    }
    // `vhost-user-scsi ctl`, the management client (docs/management.md): its help, as printed.
    if let Some(ctl) = cmd.find_subcommand("ctl") {
        writeln!(out, ".SH \"MANAGEMENT CLIENT\"")?;
        writeln!(out, ".nf")?;
        let help = ctl
            .clone()
            .bin_name("vhost-user-scsi ctl")
            .render_long_help()
            .to_string();
        for line in help.lines() {
            let line = line.replace('\\', "\\e");
            if line.starts_with('.') || line.starts_with('\'') {
                write!(out, "\\&")?;
            }
            writeln!(out, "{line}")?;
        }
        writeln!(out, ".fi")?;
    }
    writeln!(out, ".SH CAPABILITIES")?;
    writeln!(
        out,
        "\\fB\\-\\-print\\-capabilities\\fR prints a JSON object with \"type\": \"{}\" and these \
         features:",
        capabilities::DEVICE_TYPE
    )?;
    // .PD 0: no blank line between the bullets.
    writeln!(out, ".PD 0")?;
    for f in capabilities::FEATURES {
        writeln!(out, ".IP \\(bu 2\n{f}")?;
    }
    writeln!(out, ".PD")?;
    writeln!(out, ".SH FILES")?;
    for (path, what) in [
        ("/usr/libexec/vhost-user-scsi", "the daemon"),
        (
            "/usr/share/qemu/vhost-user/50-vhost-user-scsi.json",
            "the vhost-user back-end descriptor (QEMU docs/interop/vhost-user.json)",
        ),
        (
            "/etc/vhost-user-scsi/INSTANCE.toml",
            "configuration of the systemd unit vhost-user-scsi@INSTANCE.service",
        ),
        (
            "/run/vhost-user-scsi/INSTANCE.sock",
            "its socket, made by vhost-user-scsi@INSTANCE.socket",
        ),
        (
            "/usr/share/vhost-user-scsi/seccomp/",
            "the seccomp policy files compiled into the binary, for auditing",
        ),
    ] {
        writeln!(out, ".TP\n{path}\n{what}")?;
    }
    writeln!(out, ".SH \"SEE ALSO\"")?;
    writeln!(
        out,
        "qemu-system-x86_64(1), systemd.socket(5), /usr/share/doc/vhost-user-scsi/"
    )?;
    man.render_version_section(out)?;
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, bytes)
}

fn run(out_dir: &Path) -> io::Result<()> {
    let mut man = Vec::new();
    man_page(&mut man)?;
    write(&out_dir.join(format!("vhost-user-scsi.{SECTION}")), &man)?;
    for (shell, file) in [
        (Shell::Bash, "vhost-user-scsi.bash"),
        (Shell::Zsh, "_vhost-user-scsi"),
        (Shell::Fish, "vhost-user-scsi.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Args::command(), "vhost-user-scsi", &mut buf);
        write(&out_dir.join("completions").join(file), &buf)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: vhost-user-scsi-gen-docs OUTDIR");
        return ExitCode::from(2);
    };
    match run(&PathBuf::from(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-user-scsi-gen-docs: {e}");
            ExitCode::FAILURE
        }
    }
}
