//! CORS for browser-based OAuth and MCP clients (issue 22). Bearer tokens only: no answer ever
//! carries `Access-Control-Allow-Credentials`, and no cookie-authenticated page or form is
//! covered (the paths are listed here, nothing else gets a CORS header).
//!
//! - The metadata documents (`/.well-known/oauth-authorization-server`,
//!   `/.well-known/openid-configuration`, `/.well-known/oauth-protected-resource[/…]`) and the
//!   token, registration and revocation endpoints answer any origin (`*`): they hold no cookie
//!   and a browser client authenticates with its PKCE verifier, its refresh token or nothing.
//!   Introspection is for confidential (server-side) clients: not covered.
//! - `/mcp` answers only the origins it accepts (`routes::mcp` refuses others with 403 against DNS
//!   rebinding): its own, and each of `mcp_allowed_origins` (empty by default), echoed with
//!   `Vary: Origin`, exposing `Mcp-Session-Id` and `WWW-Authenticate`.
//! - Preflights (`OPTIONS`) of those paths: 204 with the methods and headers allowed; `/mcp`'s
//!   from another origin: 403, without CORS headers (the browser stops there).

use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::{Header, Status};
use rocket::request::Request;
use rocket::response::Response;
use rocket::{options, routes, Route, State};

use crate::config::Settings;
use crate::state::AppState;

/// Headers a browser client may send to `/mcp` (beyond the CORS-safelisted ones).
pub const MCP_ALLOW_HEADERS: &str = "Authorization, Content-Type, Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID";
/// Headers a browser client may read of `/mcp`'s answers.
pub const MCP_EXPOSE_HEADERS: &str = "Mcp-Session-Id, MCP-Protocol-Version, WWW-Authenticate";
/// How long a browser may keep a preflight's answer, seconds.
const MAX_AGE: &str = "600";

/// Which CORS policy a path follows, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Any origin, no credentials (metadata, token, registration, revocation).
    Public,
    /// The origins `/mcp` accepts.
    Mcp,
}

pub fn policy(path: &str) -> Option<Policy> {
    match path {
        "/mcp" => Some(Policy::Mcp),
        "/oauth/token" | "/oauth/register" | "/oauth/revoke" => Some(Policy::Public),
        "/.well-known/oauth-authorization-server"
        | "/.well-known/openid-configuration"
        | "/.well-known/oauth-protected-resource" => Some(Policy::Public),
        p if p.starts_with("/.well-known/oauth-protected-resource/") => Some(Policy::Public),
        _ => None,
    }
}

/// Whether `/mcp` accepts a request from `origin`: tokenvault's own origin, or one listed in
/// `mcp_allowed_origins`.
pub fn mcp_origin_allowed(settings: &Settings, origin: &str) -> bool {
    let origin = origin.trim_end_matches('/');
    origin == settings.public_origin() || settings.authz.mcp_allowed_origins.iter().any(|o| o == origin)
}

/// The CORS headers of an answer to `origin` on a path of `policy` (none: not allowed).
fn allow_origin(settings: &Settings, policy: Policy, origin: &str) -> Option<(String, &'static str)> {
    match policy {
        Policy::Public => Some(("*".into(), "WWW-Authenticate")),
        Policy::Mcp => mcp_origin_allowed(settings, origin).then(|| (origin.to_string(), MCP_EXPOSE_HEADERS)),
    }
}

/// Adds `Access-Control-Allow-Origin` (and what goes with it) to the answers of the paths of
/// [`policy`] to a request that sent an `Origin`.
pub struct Cors;

#[rocket::async_trait]
impl Fairing for Cors {
    fn info(&self) -> Info {
        Info { name: "CORS for OAuth and MCP clients", kind: Kind::Response }
    }

    async fn on_response<'r>(&self, req: &'r Request<'_>, res: &mut Response<'r>) {
        let Some(policy) = policy(req.uri().path().as_str()) else { return };
        if policy == Policy::Mcp {
            res.adjoin_header(Header::new("Vary", "Origin"));
        }
        let (Some(origin), Some(app)) = (req.headers().get_one("Origin"), req.rocket().state::<AppState>()) else {
            return;
        };
        if let Some((allowed, expose)) = allow_origin(&app.settings, policy, origin) {
            res.set_header(Header::new("Access-Control-Allow-Origin", allowed));
            res.set_header(Header::new("Access-Control-Expose-Headers", expose));
        }
    }
}

pub fn routes() -> Vec<Route> {
    routes![preflight_mcp, preflight_oauth, preflight_well_known]
}

/// A preflight's answer: 204 with what may be sent (the origin is added by [`Cors`]).
pub struct Preflight {
    methods: &'static str,
    headers: &'static str,
}

impl<'r> rocket::response::Responder<'r, 'static> for Preflight {
    fn respond_to(self, _: &'r Request<'_>) -> rocket::response::Result<'static> {
        Response::build()
            .status(Status::NoContent)
            .raw_header("Access-Control-Allow-Methods", self.methods)
            .raw_header("Access-Control-Allow-Headers", self.headers)
            .raw_header("Access-Control-Max-Age", MAX_AGE)
            .ok()
    }
}

/// The request's `Origin`, when it sent one.
pub struct Origin(Option<String>);

#[rocket::async_trait]
impl<'r> rocket::request::FromRequest<'r> for Origin {
    type Error = std::convert::Infallible;
    async fn from_request(req: &'r Request<'_>) -> rocket::request::Outcome<Self, Self::Error> {
        rocket::request::Outcome::Success(Origin(req.headers().get_one("Origin").map(str::to_string)))
    }
}

#[options("/mcp")]
fn preflight_mcp(app: &State<AppState>, origin: Origin) -> Result<Preflight, Status> {
    match origin.0 {
        Some(o) if mcp_origin_allowed(&app.settings, &o) => {
            Ok(Preflight { methods: "GET, POST, DELETE", headers: MCP_ALLOW_HEADERS })
        }
        _ => Err(Status::Forbidden),
    }
}

#[options("/oauth/<endpoint>")]
fn preflight_oauth(endpoint: &str) -> Option<Preflight> {
    policy(&format!("/oauth/{endpoint}"))
        .map(|_| Preflight { methods: "POST", headers: "Authorization, Content-Type, MCP-Protocol-Version" })
}

#[options("/.well-known/<path..>")]
fn preflight_well_known(path: std::path::PathBuf) -> Option<Preflight> {
    let path = format!("/.well-known/{}", path.to_str()?);
    policy(&path).map(|_| Preflight { methods: "GET", headers: "MCP-Protocol-Version" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_oauth_and_mcp_endpoints_have_a_policy() {
        assert_eq!(policy("/mcp"), Some(Policy::Mcp));
        for public in [
            "/oauth/token",
            "/oauth/register",
            "/oauth/revoke",
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp",
        ] {
            assert_eq!(policy(public), Some(Policy::Public), "{public}");
        }
        for page in
            ["/oauth/authorize", "/oauth/introspect", "/settings/apps", "/admin/oauth-clients", "/api/v1/me", "/"]
        {
            assert_eq!(policy(page), None, "{page}: cookie pages and forms never get CORS");
        }
    }
}
