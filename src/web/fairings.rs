use std::time::Instant;

use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::Header;
use rocket::{Data, Request, Response};

use super::RequestId;

/// The response header (never sent: the fairing removes it) by which a page names one more
/// origin its forms may be redirected to (`form-action`).
pub const FORM_ACTION_HEADER: &str = "X-Tokenvault-Form-Action";

/// Whether `text` is a CSP host-source or scheme-source without anything that could end the
/// directive (`;`, `,`, spaces, quotes).
fn is_source_expression(text: &str) -> bool {
    !text.is_empty() && text.len() <= 300 && text.chars().all(|c| c.is_ascii_alphanumeric() || ":/.-+[]".contains(c))
}

/// Security headers on every response, error pages included.
pub struct SecurityHeaders {
    csp: std::sync::RwLock<(u64, String)>,
    /// The providers in effect, whose authorize origins `form-action` follows (`None`: fixed).
    live: Option<LiveForms>,
    hsts: bool,
}

/// Where the live `form-action` list comes from.
struct LiveForms {
    catalog: std::sync::Arc<crate::oauth::managed::LiveCatalog>,
    own_origin: String,
    /// Origins allowed whatever the catalog (the demo provider's registered redirect URIs).
    extra: Vec<String>,
}

fn csp_of(form_action_origins: &[String]) -> String {
    let mut form_action = String::from("'self'");
    for origin in form_action_origins {
        form_action.push(' ');
        form_action.push_str(origin);
    }
    format!(
        "default-src 'none'; style-src 'self'; img-src 'self' data:; font-src 'self'; \
         form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )
}

impl SecurityHeaders {
    /// `form_action_origins`: the providers' authorize origins, which the Authorize form's redirect
    /// must be allowed to reach (browsers apply `form-action` to redirects after a form POST).
    pub fn new(form_action_origins: &[String], https: bool) -> SecurityHeaders {
        SecurityHeaders { csp: std::sync::RwLock::new((0, csp_of(form_action_origins))), live: None, hsts: https }
    }

    /// `form-action` following the catalog in effect: the authorize origins of its providers
    /// (other than `own_origin`) and `extra`, recomputed when the catalog is replaced.
    pub fn live(
        catalog: std::sync::Arc<crate::oauth::managed::LiveCatalog>,
        own_origin: String,
        extra: Vec<String>,
        https: bool,
    ) -> SecurityHeaders {
        let live = LiveForms { catalog, own_origin, extra };
        let csp = std::sync::RwLock::new((live.catalog.generation(), csp_of(&live.origins())));
        SecurityHeaders { csp, live: Some(live), hsts: https }
    }

    pub fn csp(&self) -> String {
        if let Some(live) = &self.live {
            let generation = live.catalog.generation();
            let current = self.csp.read().unwrap_or_else(|e| e.into_inner());
            if current.0 != generation {
                drop(current);
                let csp = csp_of(&live.origins());
                *self.csp.write().unwrap_or_else(|e| e.into_inner()) = (generation, csp.clone());
                return csp;
            }
            return current.1.clone();
        }
        self.csp.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }
}

impl LiveForms {
    fn origins(&self) -> Vec<String> {
        let mut origins = self.catalog.current().authorize_origins(&self.own_origin);
        origins.extend(self.extra.iter().cloned());
        origins.sort();
        origins.dedup();
        origins
    }
}

#[rocket::async_trait]
impl Fairing for SecurityHeaders {
    fn info(&self) -> Info {
        Info { name: "Security headers", kind: Kind::Response }
    }

    async fn on_response<'r>(&self, req: &'r Request<'_>, res: &mut Response<'r>) {
        // A page whose form's answer redirects to another origin (the consent page, to the
        // client's redirect URI) names it in FORM_ACTION_HEADER; it is added to `form-action`.
        let extra = res.headers().get_one(FORM_ACTION_HEADER).filter(|o| is_source_expression(o)).map(str::to_string);
        res.remove_header(FORM_ACTION_HEADER);
        let csp = self.csp();
        let csp = match extra {
            Some(origin) => csp.replacen("form-action ", &format!("form-action {origin} "), 1),
            None => csp,
        };
        res.set_header(Header::new("Content-Security-Policy", csp));
        res.set_header(Header::new("X-Content-Type-Options", "nosniff"));
        res.set_header(Header::new("Referrer-Policy", "no-referrer"));
        res.set_header(Header::new("X-Frame-Options", "DENY"));
        res.set_header(Header::new("Cross-Origin-Opener-Policy", "same-origin"));
        if self.hsts {
            res.set_header(Header::new("Strict-Transport-Security", "max-age=31536000; includeSubDomains"));
        }
        // Pages show per-user data and tokens' metadata: never cache them. Static assets keep the
        // `Cache-Control` their route set (`crate::assets`); a 404 under /static is not cached.
        if !(req.uri().path().starts_with("/static/") && res.headers().contains("Cache-Control")) {
            res.set_header(Header::new("Cache-Control", "no-store"));
        }
        let id = req.local_cache(RequestId::new);
        res.set_header(Header::new("X-Request-Id", id.to_string()));
    }
}

/// One log line per request: method, path (never the query string, which can hold codes and
/// states), status, duration and request id. The path is the client's choice, so at most
/// [`LOGGED_PATH_MAX`] bytes of it are written (then `…`): a line is bounded whatever is sent.
pub struct RequestLog;

/// The most of a request's path a log line holds.
pub const LOGGED_PATH_MAX: usize = 256;

struct Started(Instant);

#[rocket::async_trait]
impl Fairing for RequestLog {
    fn info(&self) -> Info {
        Info { name: "Request log", kind: Kind::Request | Kind::Response }
    }

    async fn on_request(&self, req: &mut Request<'_>, _: &mut Data<'_>) {
        req.local_cache(|| Started(Instant::now()));
        req.local_cache(RequestId::new);
    }

    async fn on_response<'r>(&self, req: &'r Request<'_>, res: &mut Response<'r>) {
        let elapsed = req.local_cache(|| Started(Instant::now())).0.elapsed();
        let id = req.local_cache(RequestId::new);
        tracing::info!(
            request_id = %id,
            method = %req.method(),
            path = %crate::util::capped(req.uri().path().as_str(), LOGGED_PATH_MAX),
            status = res.status().code,
            micros = elapsed.as_micros() as u64,
            "request"
        );
    }
}

/// Wraps a route's handler so that everything logged while it runs (its guards, the handler,
/// models, outbound calls) carries the request id in a `tracing` span.
#[derive(Clone)]
struct Traced(Box<dyn rocket::route::Handler>);

#[rocket::async_trait]
impl rocket::route::Handler for Traced {
    async fn handle<'r>(&self, req: &'r Request<'_>, data: Data<'r>) -> rocket::route::Outcome<'r> {
        use tracing::Instrument;
        let id = req.local_cache(RequestId::new).to_string();
        let span = tracing::info_span!("request", request_id = %id);
        self.0.handle(req, data).instrument(span).await
    }
}

/// The same routes, with their handlers wrapped in a request-id span (see [`Traced`]).
pub fn traced(routes: Vec<rocket::Route>) -> Vec<rocket::Route> {
    routes
        .into_iter()
        .map(|mut route| {
            route.handler = Box::new(Traced(route.handler));
            route
        })
        .collect()
}
