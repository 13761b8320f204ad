//! URL parameters of a provider — `{shop}`, `{subdomain}`, `{domain}`, `{host}`, `{realm}`,
//! Microsoft's `{tenant}`: declared by a preset (`parameters`: name, description, example, kind,
//! default), given by the operator's table (`params = { shop = "…" }`, and for `tenant` also the
//! `tenant` key), checked against their kind and filled into the provider's URLs.
//!
//! Every kind refuses `/`, `@`, `?`, `#`, `%`, `\` and whitespace, so a parameter value can never
//! move a URL to another host or path than its template says.

use serde::Serialize;

use crate::config::providers::{ParameterKind, ParameterSpec, ProviderConfig};
use crate::config::{invalid, ConfigError};

/// A parameter of a resolved provider: what it is (for a form field) and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parameter {
    pub name: String,
    pub description: String,
    pub example: String,
    pub value: String,
}

/// Placeholders that are not parameters: `{client_id}` is filled at call time (GitHub's
/// revocation URL, Twitch's `Client-Id` header).
pub const RESERVED: &[&str] = &["client_id", "token"];

fn is_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_hostname(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    port_ok && host.len() <= 253 && host.split('.').all(is_label)
}

fn is_segment(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
        && s != "."
        && s != ".."
}

impl ParameterKind {
    /// Whether `value` is a value of this kind.
    pub fn accepts(self, value: &str) -> bool {
        match self {
            ParameterKind::Label => is_label(value),
            ParameterKind::Hostname => is_hostname(value),
            ParameterKind::Segment => is_segment(value),
        }
    }

    /// What a value of this kind is, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            ParameterKind::Label => "a host name label (1-63 letters, digits and `-`, not at either end)",
            ParameterKind::Hostname => {
                "a host name (labels of letters, digits and `-` joined by dots, optionally `:port`)"
            }
            ParameterKind::Segment => "one URL path segment (1-128 letters, digits, `.`, `_`, `~` and `-`)",
        }
    }
}

/// Whether `name` may name a parameter: 1-32 of a-z, 0-9 and `_`, starting with a letter, and not
/// one of the [`RESERVED`] placeholders.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !RESERVED.contains(&name)
}

/// A value as an error message may quote it: printable, at most 80 characters.
fn quoted(value: &str) -> String {
    format!("`{}`", value.chars().filter(|c| !c.is_control()).take(80).collect::<String>())
}

fn check_spec(key: &dyn Fn(&str) -> String, spec: &ParameterSpec, index: usize) -> Result<(), ConfigError> {
    let at = || key(&format!("parameters[{index}]"));
    if !valid_name(&spec.name) {
        return Err(invalid(
            at(),
            format!(
                "{} is not a parameter name (1-32 of a-z, 0-9 and `_`, starting with a letter; not {})",
                quoted(&spec.name),
                RESERVED.join(" or ")
            ),
        ));
    }
    if spec.description.trim().is_empty() {
        return Err(invalid(at(), format!("parameter `{}` needs a description", spec.name)));
    }
    for (what, value) in [("example", Some(&spec.example)), ("default", spec.default.as_ref())] {
        if let Some(value) = value.filter(|v| !spec.kind.accepts(v)) {
            return Err(invalid(
                at(),
                format!("the {what} of `{}`, {}, is not {}", spec.name, quoted(value), spec.kind.describe()),
            ));
        }
    }
    Ok(())
}

/// The parameters of `cfg` (a preset merged with the operator's table) with their values. Refused:
/// a malformed declaration, a value for a parameter the provider does not take, a missing value
/// (without a default) and a value not of the parameter's kind. `tenant` set as its own key is
/// the `tenant` parameter's value (and, as before parameters existed, ignored by a provider that
/// takes none).
pub fn resolve(name: &str, cfg: &ProviderConfig) -> Result<Vec<Parameter>, ConfigError> {
    let key = |field: &str| format!("providers.{name}.{field}");
    let specs = cfg.parameters.clone().unwrap_or_default();
    for (index, spec) in specs.iter().enumerate() {
        check_spec(&key, spec, index)?;
        if specs[..index].iter().any(|s| s.name == spec.name) {
            return Err(invalid(key(&format!("parameters[{index}]")), format!("`{}` is declared twice", spec.name)));
        }
    }
    let mut given = cfg.params.clone().unwrap_or_default();
    let takes_tenant = specs.iter().any(|s| s.name == "tenant");
    if let (Some(tenant), true) = (&cfg.tenant, takes_tenant) {
        if given.contains_key("tenant") {
            return Err(invalid(key("tenant"), "set either `tenant` or `params.tenant`, not both"));
        }
        given.insert("tenant".into(), tenant.clone());
    }
    if let Some(unknown) = given.keys().find(|k| !specs.iter().any(|s| &s.name == *k)) {
        let takes = if specs.is_empty() {
            "it takes none".to_string()
        } else {
            format!("it takes {}", specs.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", "))
        };
        return Err(invalid(
            key(&format!("params.{unknown}")),
            format!("this provider has no such parameter ({takes})"),
        ));
    }
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let from_tenant_key = spec.name == "tenant" && cfg.tenant.is_some();
        let at = if from_tenant_key { key("tenant") } else { key(&format!("params.{}", spec.name)) };
        let value = match given.remove(&spec.name).or_else(|| spec.default.clone()) {
            Some(v) => v,
            None => {
                return Err(invalid(
                    at,
                    format!("is required: {} (e.g. {})", spec.description.trim_end_matches('.'), quoted(&spec.example)),
                ))
            }
        };
        if !spec.kind.accepts(&value) {
            return Err(invalid(at, format!("{} is not {}", quoted(&value), spec.kind.describe())));
        }
        out.push(Parameter { name: spec.name, description: spec.description, example: spec.example, value });
    }
    Ok(out)
}

/// `text` with each `{name}` of `parameters` replaced by its value and each `{name}` of `keep` left
/// as it is; any other `{…}` is an error naming `key`.
pub fn fill(key: &str, text: &str, parameters: &[Parameter], keep: &[&str]) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(invalid(key, "has a `{` without its `}`"));
        };
        let placeholder = &after[..close];
        match parameters.iter().find(|p| p.name == placeholder) {
            Some(p) => out.push_str(&p.value),
            None if keep.contains(&placeholder) => {
                out.push('{');
                out.push_str(placeholder);
                out.push('}');
            }
            None => {
                return Err(invalid(
                    key,
                    format!(
                        "{} is not a parameter of this provider (declare it in `parameters`)",
                        quoted(&format!("{{{placeholder}}}"))
                    ),
                ))
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(name: &str, kind: ParameterKind, default: Option<&str>) -> ParameterSpec {
        let example = match kind {
            ParameterKind::Label => "acme",
            ParameterKind::Hostname => "acme.example.com",
            ParameterKind::Segment => "main",
        };
        ParameterSpec {
            name: name.into(),
            description: format!("The {name}."),
            example: example.into(),
            kind,
            default: default.map(str::to_string),
        }
    }

    fn cfg(specs: Vec<ParameterSpec>, params: &[(&str, &str)]) -> ProviderConfig {
        let params: BTreeMap<String, String> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ProviderConfig { parameters: Some(specs), params: Some(params), ..Default::default() }
    }

    #[test]
    fn kinds_accept_what_they_say_and_nothing_that_leaves_the_host() {
        for ok in ["acme", "acme-store", "A1", &"a".repeat(63)] {
            assert!(ParameterKind::Label.accepts(ok), "{ok}");
        }
        for ok in ["acme.okta.com", "login.example.com:8443", "localhost", "sso"] {
            assert!(ParameterKind::Hostname.accepts(ok), "{ok}");
        }
        for ok in ["common", "contoso.onmicrosoft.com", "9188040d-6c67-4c5b-b112-36a304b66dad", "my_realm~1"] {
            assert!(ParameterKind::Segment.accepts(ok), "{ok}");
        }
        let hostile = [
            "",
            "-acme",
            "acme-",
            "evil.com/",
            "evil.com/x",
            "x@evil.com",
            "evil.com?",
            "evil.com#",
            "a b",
            "a%2fb",
            "a\\b",
            "a\nb",
            "..",
            ".",
            "a..b",
            "é",
            "a:0",
            "a:99999",
            "a:",
            "a:b",
        ];
        for kind in [ParameterKind::Label, ParameterKind::Hostname, ParameterKind::Segment] {
            for bad in hostile {
                let allowed = kind == ParameterKind::Segment && matches!(bad, "a..b" | "-acme" | "acme-");
                assert_eq!(kind.accepts(bad), allowed, "{kind:?} {bad:?}");
            }
        }
        assert!(!ParameterKind::Label.accepts("acme.example.com"), "a label has no dots");
        assert!(!ParameterKind::Label.accepts(&"a".repeat(64)));
        assert!(!ParameterKind::Hostname.accepts(&format!("{}.com", "a.".repeat(130))), "at most 253 characters");
    }

    #[test]
    fn values_are_given_defaulted_required_and_checked() {
        let specs = vec![
            spec("host", ParameterKind::Hostname, Some("gitlab.com")),
            spec("realm", ParameterKind::Segment, None),
        ];
        let p = resolve("kc", &cfg(specs.clone(), &[("realm", "main")])).unwrap();
        assert_eq!(
            p.iter().map(|p| (p.name.as_str(), p.value.as_str())).collect::<Vec<_>>(),
            [("host", "gitlab.com"), ("realm", "main")]
        );
        assert_eq!(p[1].description, "The realm.");
        assert_eq!(p[1].example, "main");

        let err = resolve("kc", &cfg(specs.clone(), &[])).unwrap_err().to_string();
        assert!(
            err.contains("providers.kc.params.realm") && err.contains("is required: The realm (e.g. `main`)"),
            "{err}"
        );
        let err = resolve("kc", &cfg(specs.clone(), &[("realm", "a/b")])).unwrap_err().to_string();
        assert!(
            err.contains("providers.kc.params.realm") && err.contains("`a/b` is not one URL path segment"),
            "{err}"
        );
        let err = resolve("kc", &cfg(specs.clone(), &[("realm", "x"), ("shop", "y")])).unwrap_err().to_string();
        assert!(err.contains("providers.kc.params.shop") && err.contains("it takes `host`, `realm`"), "{err}");
        let err = resolve("plain", &cfg(vec![], &[("shop", "y")])).unwrap_err().to_string();
        assert!(err.contains("it takes none"), "{err}");
        let err = resolve("kc", &cfg(specs, &[("host", "evil.com/@x"), ("realm", "x")])).unwrap_err().to_string();
        assert!(err.contains("params.host") && err.contains("is not a host name"), "{err}");
    }

    #[test]
    fn the_tenant_key_is_the_tenant_parameter() {
        let specs = vec![spec("tenant", ParameterKind::Segment, Some("common"))];
        let tenant = |t: Option<&str>, params: &[(&str, &str)]| {
            let c = ProviderConfig { tenant: t.map(str::to_string), ..cfg(specs.clone(), params) };
            resolve("ms", &c).map(|p| p[0].value.clone())
        };
        assert_eq!(tenant(None, &[]).unwrap(), "common");
        assert_eq!(tenant(Some("contoso"), &[]).unwrap(), "contoso");
        assert_eq!(tenant(None, &[("tenant", "contoso")]).unwrap(), "contoso");
        let err = tenant(Some("a"), &[("tenant", "b")]).unwrap_err().to_string();
        assert!(err.contains("providers.ms.tenant") && err.contains("not both"), "{err}");
        let err = tenant(Some("contoso/evil"), &[]).unwrap_err().to_string();
        assert!(err.contains("providers.ms.tenant"), "{err}");
        // A provider without a `tenant` parameter ignores the key, as it always did.
        let plain = ProviderConfig { tenant: Some("contoso".into()), ..Default::default() };
        assert!(resolve("gh", &plain).unwrap().is_empty());
    }

    #[test]
    fn declarations_are_checked() {
        let bad = |s: ParameterSpec| resolve("x", &cfg(vec![s], &[])).unwrap_err().to_string();
        assert!(bad(spec("client_id", ParameterKind::Label, Some("a"))).contains("not a parameter name"));
        assert!(bad(spec("Shop", ParameterKind::Label, Some("a"))).contains("not a parameter name"));
        assert!(bad(ParameterSpec { description: " ".into(), ..spec("shop", ParameterKind::Label, Some("a")) })
            .contains("needs a description"));
        assert!(bad(ParameterSpec { example: "a/b".into(), ..spec("shop", ParameterKind::Label, Some("a")) })
            .contains("the example of `shop`"));
        assert!(bad(spec("shop", ParameterKind::Label, Some("a.b"))).contains("the default of `shop`"));
        let twice = vec![spec("shop", ParameterKind::Label, Some("a")), spec("shop", ParameterKind::Label, Some("b"))];
        assert!(resolve("x", &cfg(twice, &[])).unwrap_err().to_string().contains("declared twice"));
    }

    #[test]
    fn filling_replaces_parameters_keeps_reserved_and_refuses_the_rest() {
        let params = vec![Parameter {
            name: "shop".into(),
            description: String::new(),
            example: String::new(),
            value: "acme".into(),
        }];
        let fill = |t: &str| fill("providers.s.token_url", t, &params, &["client_id"]);
        assert_eq!(fill("https://{shop}.myshopify.com/a/{shop}").unwrap(), "https://acme.myshopify.com/a/acme");
        assert_eq!(fill("https://x.example/{client_id}/t").unwrap(), "https://x.example/{client_id}/t");
        assert_eq!(fill("https://x.example/plain").unwrap(), "https://x.example/plain");
        let err = fill("https://{subdomain}.zendesk.com").unwrap_err().to_string();
        assert!(err.contains("providers.s.token_url") && err.contains("`{subdomain}` is not a parameter"), "{err}");
        assert!(fill("https://x.example/{shop").unwrap_err().to_string().contains("without its `}`"));
    }
}
