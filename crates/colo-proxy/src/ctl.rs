//! `colo-proxy ctl`: send one command to a proxy's control socket and print the
//! reply (pretty JSON). Events the proxy pushes meanwhile are skipped. Exits 1 if
//! the reply says `"ok": false`, 2 if the command's arguments are wrong.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::cli::{CtlArgs, CtlCommand};

/// How long to wait for the reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Run `colo-proxy ctl`.
pub fn run(args: &CtlArgs) -> anyhow::Result<ExitCode> {
    let path = &args.control;
    let mut stream = UnixStream::connect(path)
        .with_context(|| format!("cannot connect to the control socket {}", path.display()))?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let request = match request(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    writeln!(stream, "{request}").context("cannot send the command")?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader
            .read_line(&mut line)
            .context("no reply from the proxy")?
            == 0
        {
            bail!("the proxy closed the control connection without replying");
        }
        let value: Value = serde_json::from_str(line.trim())
            .with_context(|| format!("the proxy sent something that is not JSON: {line:?}"))?;
        if value.get("event").is_some() {
            continue;
        }
        // A closed stdout (`| head`) is not an error worth a panic.
        let _ = writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string_pretty(&value)?
        );
        return Ok(if value.get("ok") == Some(&Value::Bool(true)) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
}

/// The JSON command for `args`; a wrong number of arguments is an error.
fn request(args: &CtlArgs) -> anyhow::Result<Value> {
    let name = args.command.wire_name();
    let a: Vec<&str> = args.args.iter().map(String::as_str).collect();
    Ok(match (args.command, a.as_slice()) {
        (CtlCommand::SetLogLevel, [filter]) => json!({"v": 1, "cmd": name, "filter": filter}),
        (CtlCommand::SetLogLevel, _) => {
            bail!("usage: colo-proxy ctl --control PATH set-log-level FILTER (e.g. debug)")
        }
        (CtlCommand::SetFlowPolicy, [matcher, policy]) => {
            json!({"v": 1, "cmd": name, "match": matcher, "policy": policy})
        }
        (CtlCommand::SetFlowPolicy, _) => bail!(
            "usage: colo-proxy ctl --control PATH set-flow-policy PROTO:[ADDR:]PORT pass|compare"
        ),
        (_, []) => json!({"v": 1, "cmd": name}),
        (_, _) => bail!("{name} takes no arguments"),
    })
}
