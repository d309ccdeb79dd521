//! The TOML configuration file (`--config FILE` or `COLO_PROXY_CONFIG`).
//!
//! The file holds a top-level `log-level` and one table per command (`[compare]`,
//! `[rewrite]`, and any later role) whose keys are the command's long flags
//! without the dashes: `primary-in = "unix:/run/p.sock"`, `compare-timeout = 3000`,
//! `vnet-hdr-support = true`, `pass-port = ["udp:123"]`.
//!
//! clap stays the one source of truth: the running command's table is turned into
//! flags (`--key=value`, repeated for arrays, `--key` for a `true` switch) and
//! inserted right after the command name, except for the keys the command line
//! sets itself, so flags win over the file and the file wins over defaults. Every
//! table in the file is checked against its command's flags, and every value
//! against its flag's parser, so a typo anywhere in the file is reported with the
//! file, line and key instead of being ignored. A new flag of any role is settable
//! from the file with no code here.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::Path;

use clap::{Arg, ArgAction, ArgMatches, CommandFactory as _};
use toml::de::{DeTable, DeValue};

use crate::cli::Cli;

/// The environment variable naming a config file when `--config` is not given.
pub const ENV: &str = "COLO_PROXY_CONFIG";

/// Top-level keys that are not command tables.
const TOP_KEYS: &[&str] = &["log-level"];

/// Flags that are not options (never read from the file).
const NOT_OPTIONS: &[&str] = &["help", "version"];

/// Where the command line puts what.
#[derive(Debug)]
struct Scan {
    /// `--config` value.
    config: Option<OsString>,
    /// Index of the command name in argv.
    command: Option<usize>,
    /// Index of `--`, if any.
    end: usize,
}

fn scan(argv: &[OsString]) -> Scan {
    let mut s = Scan {
        config: None,
        command: None,
        end: argv.len(),
    };
    let mut i = 1;
    while i < argv.len() {
        let t = argv[i].to_string_lossy();
        if t == "--" {
            s.end = i;
            break;
        }
        if t == "--config" {
            s.config = argv.get(i + 1).cloned();
            i += 2;
            continue;
        }
        if let Some(v) = t.strip_prefix("--config=") {
            s.config = Some(v.into());
        } else if t == "--log-level" && s.command.is_none() {
            i += 2;
            continue;
        } else if !t.starts_with('-') && s.command.is_none() {
            s.command = Some(i);
        }
        i += 1;
    }
    s
}

/// Whether the command line (before `--`) sets the flag `--long` (or `-short`) itself.
fn given(argv: &[OsString], scan: &Scan, long: &str) -> bool {
    given_as(argv, scan, long, None)
}

fn given_as(argv: &[OsString], scan: &Scan, long: &str, short: Option<char>) -> bool {
    let flag = format!("--{long}");
    let with_value = format!("--{long}=");
    let short = short.map(|c| format!("-{c}"));
    argv[1..scan.end].iter().any(|t| {
        let t = t.to_string_lossy();
        t == flag.as_str()
            || t.starts_with(&with_value)
            || short.as_deref().is_some_and(|s| t.starts_with(s))
    })
}

/// The command line with the config file's options inserted (or unchanged without a
/// file). `env` is the value of [`ENV`]. Errors name the file, line and key.
pub fn expand(argv: Vec<OsString>, env: Option<OsString>) -> Result<Vec<OsString>, String> {
    let scan = scan(&argv);
    let Some(path) = scan
        .config
        .clone()
        .or_else(|| env.filter(|e| !e.is_empty()))
    else {
        return Ok(argv);
    };
    let path = Path::new(&path);
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the config file {}: {e}; check --config or {ENV}",
            path.display()
        )
    })?;
    let file = File {
        path: &path.display().to_string(),
        text: &text,
    };
    let table = DeTable::parse(&text).map_err(|e| {
        let at = e
            .span()
            .map_or(String::new(), |s| format!(":{}", file.line(s.start)));
        format!("{}{at}: not valid TOML: {}", file.path, e.message())
    })?;
    let cli = Cli::command();
    let running = scan.command.map(|i| argv[i].to_string_lossy().into_owned());
    let mut top: Vec<OsString> = Vec::new();
    let mut inserted: Vec<OsString> = Vec::new();
    for (key, value) in table.get_ref() {
        let name: &str = key.get_ref();
        let line = file.line(key.span().start);
        if name == "log-level" {
            let Some(level) = value.get_ref().as_str() else {
                return Err(format!(
                    "{}:{line}: log-level must be a string such as \"info\" or \
                     \"warn,colo_proxy=debug\"",
                    file.path
                ));
            };
            if !given(&argv, &scan, "log-level") {
                top.push(format!("--log-level={level}").into());
            }
            continue;
        }
        let Some(sub) = cli.find_subcommand(name).filter(|s| s.get_name() == name) else {
            let mut accepted: Vec<&str> = TOP_KEYS.to_vec();
            accepted.extend(cli.get_subcommands().map(clap::Command::get_name));
            return Err(format!(
                "{}:{line}: unknown top-level key `{name}`; accepted: {} (a table per command, \
                 e.g. [compare])",
                file.path,
                accepted.join(", ")
            ));
        };
        let Some(options) = value.get_ref().as_table() else {
            return Err(format!(
                "{}:{line}: `{name}` must be a table: [{name}] followed by its options",
                file.path
            ));
        };
        let args = file.table_args(sub, options)?;
        if running.as_deref() == Some(name) {
            for key in args {
                if !given_as(&argv, &scan, &key.long, key.short) {
                    inserted.extend(key.flags);
                }
            }
        }
    }
    let mut out = Vec::with_capacity(argv.len() + top.len() + inserted.len());
    match scan.command {
        Some(i) => {
            out.push(argv[0].clone());
            out.extend(top);
            out.extend_from_slice(&argv[1..=i]);
            out.extend(inserted);
            out.extend_from_slice(&argv[i + 1..]);
        }
        None => {
            out.push(argv[0].clone());
            out.extend(top);
            out.extend_from_slice(&argv[1..]);
        }
    }
    Ok(out)
}

/// The flags one key of a table stands for.
struct KeyFlags {
    /// The key, which is the flag's long name.
    long: String,
    /// The flag's short name, if any.
    short: Option<char>,
    /// What to insert into the command line.
    flags: Vec<OsString>,
}

/// The file being read, for error messages.
struct File<'a> {
    path: &'a str,
    text: &'a str,
}

impl File<'_> {
    /// 1-based line of a byte offset.
    fn line(&self, at: usize) -> usize {
        self.text
            .get(..at)
            .map_or(0, |t| t.bytes().filter(|&b| b == b'\n').count())
            + 1
    }

    /// The flags for one command's table, per key, each value
    /// checked with its flag's own parser.
    fn table_args(
        &self,
        sub: &clap::Command,
        options: &DeTable<'_>,
    ) -> Result<Vec<KeyFlags>, String> {
        let table = sub.get_name();
        let mut out = Vec::new();
        for (key, value) in options {
            let name: &str = key.get_ref();
            let line = self.line(key.span().start);
            let here = format!("{}:{line}: [{table}] {name}", self.path);
            let arg = sub
                .get_arguments()
                .find(|a| a.get_long() == Some(name) && !NOT_OPTIONS.contains(&name));
            let Some(arg) = arg else {
                return Err(format!(
                    "{here}: unknown key; accepted in [{table}]: {}",
                    option_names(sub).join(", ")
                ));
            };
            let flags = flags_for(arg, value.get_ref()).map_err(|e| format!("{here}: {e}"))?;
            for f in &flags {
                check_value(arg, f).map_err(|e| format!("{here}: {e}"))?;
            }
            out.push(KeyFlags {
                long: name.to_owned(),
                short: arg.get_short(),
                flags,
            });
        }
        Ok(out)
    }
}

/// The long names of a command's options.
fn option_names(sub: &clap::Command) -> Vec<&str> {
    sub.get_arguments()
        .filter_map(Arg::get_long)
        .filter(|l| !NOT_OPTIONS.contains(l))
        .collect()
}

/// Whether the flag is an `on|off` switch (`--vnet-hdr-support[=on|off]`): an
/// optional value, which every such flag in `cli.rs` takes as on|off.
fn is_on_off(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Set | ArgAction::SetTrue)
        && arg
            .get_num_args()
            .is_some_and(|r| r.min_values() == 0 && r.max_values() == 1)
}

fn scalar(v: &DeValue<'_>) -> Option<String> {
    match v {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(|n| n.to_string()),
        DeValue::Float(f) => Some(f.as_str().to_owned()),
        DeValue::Boolean(b) => Some(b.to_string()),
        DeValue::Datetime(_) | DeValue::Array(_) | DeValue::Table(_) => None,
    }
}

/// The flags one key stands for.
fn flags_for(arg: &Arg, value: &DeValue<'_>) -> Result<Vec<OsString>, String> {
    let long = arg.get_long().unwrap_or_default();
    let what = arg
        .get_value_names()
        .and_then(|n| n.first())
        .map_or_else(|| "VALUE".to_owned(), ToString::to_string);
    match arg.get_action() {
        // Before SetTrue: an on|off switch whose default may be on needs `=off`.
        _ if is_on_off(arg) => match value {
            DeValue::Boolean(b) => Ok(vec![
                format!("--{long}={}", if *b { "on" } else { "off" }).into(),
            ]),
            DeValue::String(s) => Ok(vec![format!("--{long}={s}").into()]),
            other => Err(format!(
                "expects true or false (or \"on\"/\"off\"), not {}",
                other.type_str()
            )),
        },
        ArgAction::SetTrue => match value {
            DeValue::Boolean(true) => Ok(vec![format!("--{long}").into()]),
            DeValue::Boolean(false) => Ok(Vec::new()),
            other => Err(format!("expects true or false, not {}", other.type_str())),
        },
        ArgAction::Append => {
            let items: Vec<&DeValue<'_>> = match value {
                DeValue::Array(a) => a.iter().map(|v| v.get_ref()).collect(),
                one => vec![one],
            };
            items
                .into_iter()
                .map(|v| {
                    scalar(v)
                        .map(|s| OsString::from(format!("--{long}={s}")))
                        .ok_or_else(|| {
                            format!(
                                "expects a list of {what} values, e.g. [\"...\"], not {}",
                                v.type_str()
                            )
                        })
                })
                .collect()
        }
        _ => match scalar(value) {
            Some(s) if !matches!(value, DeValue::Boolean(_)) => {
                Ok(vec![format!("--{long}={s}").into()])
            }
            _ => Err(format!(
                "expects one {what} value (a string or a number), not {}",
                value.type_str()
            )),
        },
    }
}

/// Run one generated flag through its argument's own parser.
fn check_value(arg: &Arg, flag: &OsStr) -> Result<(), String> {
    let cmd = clap::Command::new("config")
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(arg.clone().required(false));
    match cmd.try_get_matches_from([flag]) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid value");
            Err(first.trim_start_matches("error: ").to_owned())
        }
    }
}

/// Whether argv asks for `--print-config`.
pub fn wants_print(argv: &[OsString]) -> bool {
    let scan = scan(argv);
    given(argv, &scan, "print-config")
}

/// The effective configuration of the command line (file already expanded), as
/// TOML. Required options may be missing: they are printed commented out.
pub fn print(argv: &[OsString]) -> Result<String, clap::Error> {
    let cmd = Cli::command().mut_subcommands(|s| s.mut_args(|a| a.required(false)));
    let matches = cmd.clone().try_get_matches_from(argv)?;
    let mut out = String::from(
        "# colo-proxy configuration: use with --config FILE; flags on the command line win.\n",
    );
    match matches.get_one::<String>("log_level") {
        Some(level) => {
            let _ = writeln!(out, "log-level = {}", quote(level));
        }
        None => out.push_str("# log-level = \"warn\"\n"),
    }
    let Some((name, sub_m)) = matches.subcommand() else {
        return Ok(out);
    };
    let Some(sub) = cmd.find_subcommand(name) else {
        return Ok(out);
    };
    let _ = writeln!(out, "\n[{name}]");
    for arg in sub.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_OPTIONS.contains(&long) || arg.is_global_set() {
            continue;
        }
        if let Some(help) = arg.get_help() {
            let help = help.to_string();
            let first = help.lines().next().unwrap_or_default();
            let _ = writeln!(out, "# {first}");
        }
        match render(arg, sub_m) {
            Some(value) => {
                let _ = writeln!(out, "{long} = {value}");
            }
            None => {
                let _ = writeln!(out, "# {long} =");
            }
        }
    }
    Ok(out)
}

/// One option's value as TOML, if it has one.
fn render(arg: &Arg, m: &ArgMatches) -> Option<String> {
    let id = arg.get_id().as_str();
    let raw: Vec<String> = m
        .get_raw(id)?
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    let one = |s: &str| -> String {
        if matches!(arg.get_action(), ArgAction::SetTrue) || is_on_off(arg) {
            let on = matches!(s, "true" | "on" | "yes" | "1");
            return on.to_string();
        }
        match s.parse::<i64>() {
            Ok(n) => n.to_string(),
            Err(_) => quote(s),
        }
    };
    match arg.get_action() {
        ArgAction::Append => Some(format!(
            "[{}]",
            raw.iter().map(|s| one(s)).collect::<Vec<_>>().join(", ")
        )),
        _ => raw.first().map(|s| one(s)),
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests;
