//! Running the `tokenvault` binary as a command, with its configuration in the environment.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Run the binary in `dir` with `args`, no `Rocket.toml` (the one `ROCKET_CONFIG` names does not
/// exist unless a test writes it), the database `dir/cli.sqlite` and the data dir `dir/data`
/// unless `env` says otherwise, and `stdin` as standard input.
pub fn tokenvault(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(super::binary::path());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("ROCKET_PROFILE")
        .env("ROCKET_CONFIG", dir.join("Rocket.toml"))
        .env("ROCKET_DATABASE_URL", dir.join("cli.sqlite"))
        .env("ROCKET_DATA_DIR", dir.join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("binary runs");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
