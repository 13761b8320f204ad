//! The README's table of the preset catalog, generated from `presets.toml` so that it cannot
//! drift: a unit test renders it and compares it with the README's copy between the
//! `preset-table` marker comments (`TOKENVAULT_UPDATE_README=1 cargo test --lib preset_table`
//! writes the new table in).

use crate::config::providers::{AccountMethod, AccountStyle, ParameterKind, ProviderConfig, RevokeStyle, TokenRequest};
use crate::oauth::providers::{preset, preset_names};

pub const BEGIN: &str = "<!-- preset-table:begin -->";
pub const END: &str = "<!-- preset-table:end -->";

/// Text for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn code(text: &str) -> String {
    format!("`{text}`")
}

/// What a preset needs beyond plain RFC 6749 with RFC 7009 revocation: its parameters, then
/// every option it sets.
pub fn needs(cfg: &ProviderConfig) -> Vec<String> {
    let mut out = Vec::new();
    for p in cfg.parameters.iter().flatten() {
        let kind = match p.kind {
            ParameterKind::Label => "label",
            ParameterKind::Hostname => "host name",
            ParameterKind::Segment => "path segment",
        };
        out.push(match &p.default {
            Some(d) => format!("parameter {} ({kind}, default {})", code(&p.name), code(d)),
            None => format!("parameter {} ({kind}, e.g. {})", code(&p.name), code(&p.example)),
        });
    }
    if let Some(params) = &cfg.authorize_params {
        let pairs: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push(format!("authorize {}", code(&pairs.join("&"))));
    }
    if let Some(p) = &cfg.scope_param {
        out.push(format!("scope_param {}", code(p)));
    }
    if let Some(s) = &cfg.scope_separator {
        out.push(format!("scope_separator {}", code(s)));
    }
    if cfg.token_request == Some(TokenRequest::Json) {
        out.push("token_request `json`".into());
    }
    if let Some(root) = &cfg.token_response_root {
        out.push(format!("token_response_root {}", code(root)));
    }
    if cfg.refresh_url.is_some() {
        out.push("refresh_url".into());
    }
    if cfg.tokens_expire == Some(false) {
        out.push("tokens_expire `false`".into());
    }
    if cfg.pkce == Some(false) {
        out.push("no PKCE".into());
    }
    if cfg.jwks_url.is_some() {
        out.push("id_token verified (jwks_url)".into());
    }
    if let Some(h) = &cfg.api_token_header {
        out.push(format!("api_token_header {}", code(h)));
    }
    if let Some(headers) = &cfg.api_headers {
        let names: Vec<&str> = headers.keys().map(String::as_str).collect();
        out.push(format!("api_headers {}", code(&names.join(", "))));
    }
    if cfg.account_style == Some(AccountStyle::Introspect) {
        out.push("account_style `introspect`".into());
    } else if cfg.account_body.is_some() {
        out.push("account_body (GraphQL)".into());
    } else if cfg.account_method == Some(AccountMethod::Post) {
        out.push("account POST without a body".into());
    }
    if cfg.read_methods_are_safe == Some(false) {
        out.push("read_methods_are_safe `false` (no `proxy:read`)".into());
    }
    match cfg.revoke_style {
        Some(RevokeStyle::None) | None => out.push("no revocation".into()),
        Some(RevokeStyle::Rfc7009) => {}
        Some(style) => {
            let name = format!("{style:?}").to_ascii_lowercase();
            let method = cfg.revoke_method.map(|m| format!(" {m:?}").to_ascii_uppercase()).unwrap_or_default();
            out.push(format!("revoke_style {}{method}", code(&name)));
        }
    }
    out
}

/// The catalog as a Markdown table: preset, provider, what it needs, where an app is registered.
pub fn readme_table() -> String {
    let mut out = String::from("| Preset | Provider | Needs | Register an app |\n| --- | --- | --- | --- |\n");
    for name in preset_names() {
        let cfg = preset(name).expect("listed presets exist");
        let needs = needs(cfg);
        let needs = if needs.is_empty() { "—".to_string() } else { needs.join("; ") };
        let register = match &cfg.register_url {
            Some(url) => {
                format!("[{}]({url})", url.trim_start_matches("https://").split(['/', '?', '#']).next().unwrap_or(url))
            }
            None => "—".into(),
        };
        out.push_str(&format!(
            "| `{name}` | {} | {} | {} |\n",
            cell(cfg.display_name.as_deref().unwrap_or(name)),
            cell(&needs),
            cell(&register)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_name_parameters_and_options() {
        let shopify = needs(preset("shopify").unwrap());
        assert!(shopify.contains(&"parameter `shop` (label, e.g. `acme-store`)".to_string()), "{shopify:?}");
        assert!(shopify.contains(&"api_token_header `X-Shopify-Access-Token: {token}`".to_string()), "{shopify:?}");
        assert!(shopify.contains(&"revoke_style `bearer` DELETE".to_string()), "{shopify:?}");
        assert!(shopify.contains(&"account_body (GraphQL)".to_string()));
        let gitlab = needs(preset("gitlab").unwrap());
        assert_eq!(gitlab, vec!["parameter `host` (host name, default `gitlab.com`)".to_string()]);
        let slack = needs(preset("slack").unwrap());
        for want in ["scope_param `user_scope`", "scope_separator `,`", "token_response_root `/authed_user`", "no PKCE"]
        {
            assert!(slack.contains(&want.to_string()), "{want}: {slack:?}");
        }
        assert!(needs(preset("spotify").unwrap()).contains(&"no revocation".to_string()));
        assert!(needs(preset("asana").unwrap()).is_empty(), "plain OAuth needs nothing");
    }

    #[test]
    fn the_table_has_a_row_per_preset_and_escapes_cells() {
        let table = readme_table();
        assert_eq!(table.lines().count(), preset_names().len() + 2);
        assert!(table.contains("| `slack` | Slack |"));
        assert!(table.contains("[api.slack.com](https://api.slack.com/apps)"));
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }

    /// The README's copy of the table is the generated one (golden test: run with
    /// `TOKENVAULT_UPDATE_README=1` to write the new table into README.md).
    #[test]
    fn readme_catalog_table_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let (before, rest) = readme.split_once(BEGIN).expect("README.md has the preset-table begin marker");
        let (current, after) = rest.split_once(END).expect("README.md has the preset-table end marker");
        let table = readme_table();
        if current.trim() == table.trim() {
            return;
        }
        if std::env::var_os("TOKENVAULT_UPDATE_README").is_some() {
            std::fs::write(path, format!("{before}{BEGIN}\n{table}{END}{after}")).expect("README.md written");
            return;
        }
        panic!(
            "README.md's preset table is out of date: run `TOKENVAULT_UPDATE_README=1 cargo test --lib preset_table`, \
             or put this between the markers:\n\n{table}"
        );
    }
}
