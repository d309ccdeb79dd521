use std::io::Write as _;

use clap::Parser as _;

use super::*;
use crate::cli::Command;

/// Parse `argv` (after the program name) with `file` as the config file.
fn parse_with(file: Option<&str>, argv: &[&str]) -> Result<Cli, String> {
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    let mut full: Vec<OsString> = vec!["colo-proxy".into()];
    if let Some(text) = file {
        tmp.write_all(text.as_bytes()).unwrap();
        full.push("--config".into());
        full.push(tmp.path().into());
    }
    full.extend(argv.iter().map(OsString::from));
    let argv = expand(full, None)?;
    Cli::try_parse_from(argv).map_err(|e| e.to_string())
}

fn compare_of(cli: Cli) -> crate::cli::CompareArgs {
    match cli.command {
        Command::Compare(a) => a,
        other => panic!("not compare: {other:?}"),
    }
}

/// The compare timeout `colo-proxy compare` runs with after `argv` was expanded.
fn compare_timeout_of(argv: Vec<std::ffi::OsString>) -> u64 {
    compare_of(Cli::try_parse_from(argv).unwrap())
        .engine
        .compare_timeout
}

fn role_of(c: &Command) -> &'static str {
    match c {
        Command::Compare(_) => "compare",
        Command::Rewrite(_) => "rewrite",
        other => panic!("not a daemon role: {other:?}"),
    }
}

const ENDPOINTS: &str = r#"
primary-in = "unix:/run/p.sock"
secondary-in = "tcp:127.0.0.1:9003,connect"
outdev = "unix:/run/o.sock"
"#;

#[test]
fn file_alone_configures_a_role() {
    let text = format!(
        "log-level = \"debug\"\n[compare]\n{ENDPOINTS}compare-timeout = 2500\n\
         vnet-hdr-support = true\npass-port = [\"udp:123\", \"tcp:10.0.0.5:9100\"]\n"
    );
    let cli = parse_with(Some(&text), &["compare"]).unwrap();
    assert_eq!(cli.log_level.as_deref(), Some("debug"));
    let a = compare_of(cli);
    assert_eq!(a.primary_in.to_string(), "unix:/run/p.sock");
    assert!(a.secondary_in.connect);
    assert_eq!(a.engine.compare_timeout, 2500);
    assert!(a.vnet_hdr_support);
    assert_eq!(a.engine.pass_port.len(), 2);
    assert_eq!(a.engine.pass_port[1].to_string(), "tcp:10.0.0.5:9100");
    assert_eq!(a.engine.max_queue_size, 16_384, "defaults fill the rest");
}

#[test]
fn flags_override_the_file() {
    let text = format!(
        "log-level = \"debug\"\n[compare]\n{ENDPOINTS}compare-timeout = 2500\n\
         pass-port = [\"udp:123\"]\n"
    );
    let cli = parse_with(
        Some(&text),
        &[
            "--log-level",
            "warn",
            "compare",
            "--compare-timeout=700",
            "--outdev",
            "unix:/elsewhere.sock",
            "--pass-port",
            "tcp:80",
        ],
    )
    .unwrap();
    assert_eq!(cli.log_level.as_deref(), Some("warn"));
    let a = compare_of(cli);
    assert_eq!(a.engine.compare_timeout, 700);
    assert_eq!(a.outdev.to_string(), "unix:/elsewhere.sock");
    assert_eq!(
        a.engine
            .pass_port
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["tcp:80"],
        "a list on the command line replaces the file's"
    );
    assert_eq!(a.primary_in.to_string(), "unix:/run/p.sock");
    // --config after the command name works too (it is a global flag).
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    write!(tmp, "[compare]\n{ENDPOINTS}").unwrap();
    let argv = expand(
        vec![
            "colo-proxy".into(),
            "compare".into(),
            "--config".into(),
            tmp.path().into(),
        ],
        None,
    )
    .unwrap();
    let a = compare_of(Cli::try_parse_from(argv).unwrap());
    assert_eq!(a.outdev.to_string(), "unix:/run/o.sock");
}

#[test]
fn short_flags_also_override_the_file() {
    let cli = parse_with(Some("[demo]\nquiet = true\nseed = 7\n"), &["demo", "-q"]).unwrap();
    match cli.command {
        Command::Demo(d) => assert!(d.quiet && d.seed == 7),
        other => panic!("{other:?}"),
    }
}

#[test]
fn environment_names_the_file_and_the_flag_wins_over_it() {
    let mut env_file = tempfile::NamedTempFile::new().unwrap();
    write!(env_file, "[compare]\n{ENDPOINTS}compare-timeout = 11\n").unwrap();
    let argv = expand(
        vec!["colo-proxy".into(), "compare".into()],
        Some(env_file.path().into()),
    )
    .unwrap();
    assert_eq!(compare_timeout_of(argv), 11);
    let mut flag_file = tempfile::NamedTempFile::new().unwrap();
    write!(flag_file, "[compare]\n{ENDPOINTS}compare-timeout = 22\n").unwrap();
    let argv = expand(
        vec![
            "colo-proxy".into(),
            "--config".into(),
            flag_file.path().into(),
            "compare".into(),
        ],
        Some(env_file.path().into()),
    )
    .unwrap();
    assert_eq!(compare_timeout_of(argv), 22);
}

#[test]
fn unknown_keys_wrong_types_and_missing_files_are_explained() {
    let err = parse_with(
        Some("[compare]\nprimary-in = \"unix:/a\"\ncompare-timeot = 5\n"),
        &["compare"],
    )
    .unwrap_err();
    assert!(
        err.contains(":3: [compare] compare-timeot: unknown key"),
        "{err}"
    );
    assert!(err.contains("accepted in [compare]: primary-in,"), "{err}");
    assert!(err.contains("compare-timeout"), "{err}");

    let err = parse_with(Some("[rewrite]\nvnet = true\n"), &["compare"]).unwrap_err();
    assert!(
        err.contains(":2: [rewrite] vnet: unknown key"),
        "every table is checked, not only the running role's: {err}"
    );

    for (toml, says) in [
        (
            "[compare]\ncompare-timeout = \"soon\"\n",
            ":2: [compare] compare-timeout: invalid value 'soon'",
        ),
        (
            "[compare]\ncompare-timeout = 0\n",
            "compare-timeout: invalid value '0'",
        ),
        (
            "[compare]\nvnet-hdr-support = 3\n",
            "vnet-hdr-support: expects true or false",
        ),
        (
            "[compare]\noutdev = [\"a\", \"b\"]\n",
            "outdev: expects one ENDPOINT value",
        ),
        (
            "[compare]\npass-port = [\"icmp:1\"]\n",
            "pass-port: invalid value 'icmp:1'",
        ),
        ("comparee = 1\n", ":1: unknown top-level key `comparee`"),
        ("comparee = 1\n", "log-level, demo, compare"),
        ("compare = 1\n", "`compare` must be a table"),
        ("log-level = 3\n", "log-level must be a string"),
        ("[compare\n", ":1: not valid TOML"),
    ] {
        let err = parse_with(Some(toml), &["compare"]).unwrap_err();
        assert!(err.contains(says), "{toml:?}: {err}");
    }

    let err = expand(
        vec![
            "colo-proxy".into(),
            "--config".into(),
            "/nonexistent/colo.toml".into(),
            "compare".into(),
        ],
        None,
    )
    .unwrap_err();
    assert!(
        err.contains("cannot read the config file /nonexistent/colo.toml"),
        "{err}"
    );
}

/// A value for every option of every daemon role, different from its default. Adding
/// a flag or a role without adding it here fails `every_option_is_settable_from_the_file`.
const SAMPLES: &[(&str, &str, &str)] = &[
    ("compare", "primary-in", r#""unix:/x/p.sock""#),
    ("compare", "secondary-in", r#""tcp:127.0.0.1:9,connect""#),
    ("compare", "outdev", r#""unix:/x/o.sock""#),
    ("compare", "notify-dev", r#""unix:/x/n.sock""#),
    ("compare", "compare-timeout", "1234"),
    ("compare", "expired-scan-cycle", "77"),
    ("compare", "max-queue-size", "99"),
    ("compare", "vnet-hdr-support", "true"),
    ("compare", "control", r#""unix:/x/c.ctl""#),
    ("compare", "outdev-buffer", r#""1M""#),
    ("compare", "metrics", r#""tcp:127.0.0.1:9464""#),
    ("compare", "busy-poll", "true"),
    ("compare", "poll-us", "50"),
    ("compare", "pass-port", r#"["udp:123", "tcp:[fd00::1]:80"]"#),
    ("compare", "qmp-primary", r#""unix:/x/pvm.qmp""#),
    ("compare", "qmp-secondary", r#""/x/svm.qmp""#),
    ("compare", "checkpoint-delay", "20000"),
    ("compare", "checkpoint-reask", "300"),
    ("compare", "heartbeat-timeout", "1500"),
    ("compare", "silence-timeout", "6000"),
    ("compare", "auto-failover", "false"),
    (
        "compare",
        "on-failover",
        r#""/usr/local/bin/colo-failover-hook""#,
    ),
    ("rewrite", "to-secondary-in", r#""unix:/x/1.sock""#),
    ("rewrite", "to-secondary-out", r#""unix:/x/2.sock""#),
    ("rewrite", "from-secondary-in", r#""unix:/x/3.sock""#),
    (
        "rewrite",
        "from-secondary-out",
        r#""tcp:127.0.0.1:9,connect""#,
    ),
    ("rewrite", "vnet-hdr-support", "true"),
    ("rewrite", "control", r#""/x/r.ctl""#),
    ("rewrite", "out-buffer", "4096"),
    ("rewrite", "metrics", r#""tcp::9465""#),
    ("rewrite", "busy-poll", "true"),
    ("rewrite", "poll-us", "50"),
    ("primary", "client", r#""tap:colo0""#),
    ("primary", "pvm", r#""stream:unix:/x/pvm.sock""#),
    ("primary", "link", r#""tcp:192.0.2.2:9000,connect""#),
    ("primary", "control", r#""unix:/x/p.ctl""#),
    ("primary", "compare-timeout", "1234"),
    ("primary", "expired-scan-cycle", "77"),
    ("primary", "max-queue-size", "99"),
    ("primary", "vnet-hdr-support", "true"),
    ("primary", "out-buffer", r#""2M""#),
    ("primary", "pass-port", r#"["udp:123"]"#),
    ("primary", "metrics", r#""tcp:127.0.0.1:9466""#),
    ("primary", "busy-poll", "true"),
    ("primary", "poll-us", "50"),
    ("primary", "heartbeat-interval", "250"),
    ("primary", "heartbeat-timeout", "2000"),
    ("primary", "link-max-message", r#""128K""#),
    ("primary", "qmp-primary", r#""unix:/x/pvm.qmp""#),
    ("primary", "qmp-secondary", r#""/x/svm.qmp""#),
    ("primary", "checkpoint-delay", "2000"),
    ("primary", "checkpoint-reask", "300"),
    ("primary", "qmp-heartbeat-timeout", "1500"),
    ("primary", "silence-timeout", "6000"),
    ("primary", "auto-failover", "false"),
    ("primary", "on-failover", r#""true""#),
    (
        "secondary",
        "svm",
        r#""dgram:127.0.0.1:5000=127.0.0.1:5001""#,
    ),
    ("secondary", "link", r#""tcp:0.0.0.0:9000""#),
    ("secondary", "client", r#""stream:tcp:127.0.0.1:7000""#),
    ("secondary", "control", r#""/x/s.ctl""#),
    ("secondary", "vnet-hdr-support", "true"),
    ("secondary", "out-buffer", "65536"),
    ("secondary", "checkpoint-pair-window", "500"),
    ("secondary", "max-announced-addresses", "8"),
    ("secondary", "metrics", r#""tcp::9467""#),
    ("secondary", "busy-poll", "true"),
    ("secondary", "poll-us", "50"),
    ("secondary", "heartbeat-interval", "250"),
    ("secondary", "heartbeat-timeout", "2000"),
    ("secondary", "link-max-message", r#""128K""#),
];

/// The flags the same sample stands for on the command line.
fn as_flags(key: &str, toml_value: &str) -> Vec<String> {
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {toml_value}"))
        .unwrap()
        .remove("v")
        .unwrap();
    match value {
        toml::Value::Array(items) => items
            .iter()
            .map(|v| format!("--{key}={}", v.as_str().unwrap()))
            .collect(),
        toml::Value::Boolean(true) => vec![format!("--{key}")],
        toml::Value::String(s) => vec![format!("--{key}={s}")],
        other => vec![format!("--{key}={other}")],
    }
}

/// Commands that are tools rather than daemon roles. Their options are settable from
/// the file too (the mechanism is generic), but only the roles are checked one by one.
const NOT_ROLES: &[&str] = &["demo", "ctl", "replay"];

#[test]
fn every_option_is_settable_from_the_file() {
    let cli = Cli::command();
    let roles: Vec<&str> = cli
        .get_subcommands()
        .map(clap::Command::get_name)
        .filter(|n| !NOT_ROLES.contains(n))
        .collect();
    assert!(roles.contains(&"compare") && roles.contains(&"rewrite"));
    for role in roles {
        let sub = cli.find_subcommand(role).unwrap();
        let samples: Vec<(&str, &str)> = SAMPLES
            .iter()
            .filter(|(r, _, _)| *r == role)
            .map(|(_, k, v)| (*k, *v))
            .collect();
        for long in option_names(sub) {
            assert!(
                samples.iter().any(|(k, _)| *k == long),
                "--{long} of {role} has no sample in SAMPLES: add one so the test proves \
                 the config file can set it"
            );
        }
        // All samples together, from the file and from flags, parse to the same thing.
        let file = format!(
            "[{role}]\n{}",
            samples
                .iter()
                .map(|(k, v)| format!("{k} = {v}\n"))
                .collect::<String>()
        );
        assert!(
            !samples.is_empty(),
            "role {role} has no SAMPLES: add one per option"
        );
        let from_file = parse_with(Some(&file), &[role]).unwrap();
        let mut flags = vec![role.to_owned()];
        for (k, v) in &samples {
            flags.extend(as_flags(k, v));
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let from_flags = parse_with(None, &flags).unwrap();
        assert_eq!(
            format!("{:?}", from_file.command),
            format!("{:?}", from_flags.command)
        );
        // Each key has its own effect: dropping it from the file changes the result
        // (to the default, or to a parse error for a required endpoint).
        for (i, (key, _)) in samples.iter().enumerate() {
            let without = format!(
                "[{role}]\n{}",
                samples
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (k, v))| format!("{k} = {v}\n"))
                    .collect::<String>()
            );
            let changed = parse_with(Some(&without), &[role])
                .map(|c| format!("{:?}", c.command))
                .ok();
            assert_ne!(
                changed.as_deref(),
                Some(format!("{:?}", from_file.command).as_str()),
                "{role}: `{key}` in the file had no effect"
            );
        }
    }
}

#[test]
fn printed_configuration_reads_back_the_same() {
    for argv in [
        vec![
            "compare",
            "--primary-in",
            "unix:/a",
            "--secondary-in",
            "unix:/b",
            "--outdev",
            "tcp::9",
            "--vnet-hdr-support",
            "--pass-port",
            "udp:123",
            "--metrics",
            "tcp:127.0.0.1:0",
        ],
        vec![
            "--log-level",
            "info",
            "rewrite",
            "--to-secondary-in",
            "unix:/1",
            "--to-secondary-out",
            "unix:/2",
            "--from-secondary-in",
            "unix:/3",
            "--from-secondary-out",
            "unix:/4,connect",
            "--out-buffer",
            "1K",
        ],
    ] {
        let mut full: Vec<OsString> = vec!["colo-proxy".into()];
        full.extend(argv.iter().map(OsString::from));
        let printed = print(&full).unwrap();
        let direct = Cli::try_parse_from(&full).unwrap();
        let role = role_of(&direct.command);
        let back = parse_with(Some(&printed), &[role]).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(
            format!("{:?}", back.command),
            format!("{:?}", direct.command),
            "{printed}"
        );
        assert_eq!(back.log_level, direct.log_level);
    }
    // Required options that are missing are printed commented out.
    let printed = print(&["colo-proxy".into(), "rewrite".into()]).unwrap();
    assert!(printed.contains("# to-secondary-in =\n"), "{printed}");
    assert!(printed.contains("out-buffer = \"16M\"\n"), "{printed}");
}

#[test]
fn example_files_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
    for role in ["compare", "rewrite"] {
        let path = dir.join(format!("{role}.toml"));
        let argv = expand(
            vec![
                "colo-proxy".into(),
                "--config".into(),
                path.clone().into(),
                role.into(),
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(role_of(&cli.command), role);
        assert_eq!(cli.log_level.as_deref(), Some("info"));
        match &cli.command {
            Command::Compare(a) => {
                a.validate().unwrap();
                assert_eq!(a.engine.pass_port.len(), 2);
                assert!(a.operator.metrics.is_some() && a.operator.control.is_some());
            }
            Command::Rewrite(a) => {
                a.validate().unwrap();
                assert!(a.from_secondary_out.connect && a.operator.metrics.is_some());
            }
            other => panic!("{other:?}"),
        }
    }
}
