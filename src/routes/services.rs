//! The Redirector (`/services/<service>/authorize`), the Callback (`/services/<service>/callback`)
//! and the greeting after a successful connection (`/services/<service>/connected`).

use std::sync::Arc;

use rocket::form::FromForm;
use rocket::http::{Header, Status};
use rocket::response::{Redirect, Responder};
use rocket::{get, post, routes, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::auth::{Csrf, CsrfField, CurrentUser};
use crate::db::models::connections::{self, Account, ConnectionStatus, Which};
use crate::error::{AppError, AppResult};
use crate::oauth::account::identifies;
use crate::oauth::flow::{self, CallbackParams, Finished, Intent};
use crate::oauth::providers::Provider;
use crate::state::AppState;
use crate::util::{format_utc, now, relative_time};
use crate::vault::store as vault;
use crate::web::{fields, safe_next, Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![authorize_page, authorize, callback, connected]
}

pub fn provider(app: &AppState, service: &str) -> AppResult<Arc<Provider>> {
    let catalog = app.catalog.current();
    match catalog.get(service) {
        Some(p) => Ok(p),
        None => Err(match catalog.get_any(service) {
            Some(disabled) => AppError::ServiceDisabled(disabled.service()),
            None => AppError::NotFound,
        }),
    }
}

/// The Redirector's link that asks for more permissions on connection `id` (an incremental
/// authorization of the same connection, pinned to its account).
pub fn upgrade_path(service: &str, id: i64, more: &[String]) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("connection", &id.to_string())
        .append_pair("scopes", &more.join(","))
        .finish();
    format!("/services/{service}/authorize?{query}")
}

/// `scopes=a,b` (or space-separated), as a list.
fn scope_param(scopes: Option<&str>) -> Vec<String> {
    scopes.unwrap_or("").split([',', ' ']).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

#[derive(Serialize)]
struct AuthorizePage {
    service: String,
    display_name: String,
    description: String,
    provider_host: String,
    scopes: Vec<String>,
    /// Scopes the upgrade adds (shown as new).
    more_scopes: Vec<String>,
    more_scopes_param: String,
    redirect_uri: String,
    configured: bool,
    client_id_path: String,
    is_admin: bool,
    already_connected: bool,
    reconnect: bool,
    /// Reconnecting this connection (`?connection=`), of this account.
    connection: Option<i64>,
    account_label: Option<String>,
    /// Whether "Connect another account" is offered (the service is connected and tells accounts apart).
    can_add_account: bool,
    csrf_token: String,
    next: String,
}

/// The signed-in user of a page whose link may be made for one user only: `/mcp`'s "connect it"
/// link names the grant's user (`?for_user=<id>`), and anyone else signed in gets 403 before
/// anything is shown or stored; a repeated or malformed `for_user` is 400. (Read from the query
/// rather than declared on the route, so the route's name, a metrics label, stays as it was.)
pub struct LinkUser<'r>(&'r CurrentUser);

#[rocket::async_trait]
impl<'r> rocket::request::FromRequest<'r> for LinkUser<'r> {
    type Error = ();

    async fn from_request(req: &'r rocket::Request<'_>) -> rocket::request::Outcome<Self, ()> {
        use rocket::outcome::{try_outcome, Outcome};
        let user = try_outcome!(req.guard::<&CurrentUser>().await);
        let for_user: Vec<String> = req
            .uri()
            .query()
            .map(|q| q.segments().filter(|(k, _)| *k == "for_user").map(|(_, v)| v.to_string()).collect())
            .unwrap_or_default();
        match fields::once("for_user", &for_user) {
            Ok(None) => Outcome::Success(LinkUser(user)),
            Ok(Some(id)) if id.parse::<i64>().ok() == Some(user.id) => Outcome::Success(LinkUser(user)),
            Ok(Some(_)) => Outcome::Error((Status::Forbidden, ())),
            Err(_) => Outcome::Error((Status::BadRequest, ())),
        }
    }
}

#[get("/services/<service>/authorize?<next>&<connection>&<scopes>")]
async fn authorize_page(
    app: &State<AppState>,
    user: LinkUser<'_>,
    layout: Layout,
    service: &str,
    next: Option<&str>,
    connection: Vec<String>,
    scopes: Vec<String>,
) -> AppResult<Template> {
    let LinkUser(user) = user;
    {
        let (connection, scopes) = (fields::connection_id(&connection)?, fields::once("scopes", &scopes)?);
        let p = provider(app, service)?;
        let cipher = app.cipher.clone();
        let (name, uid) = (p.name.clone(), user.id);
        let (configured, rows) = app
            .db
            .run(move |conn| {
                Ok((
                    vault::client_credentials(conn, &cipher, &name)?.is_some(),
                    connections::list_for(conn, uid, &name)?,
                ))
            })
            .await?;
        let target = match connection {
            Some(id) => Some(rows.iter().find(|c| c.id == id).ok_or(AppError::NotFound)?),
            None => None,
        };
        let existing = target.or(if rows.len() == 1 { rows.first() } else { None });
        let more = scope_param(scopes);
        let all = flow::scopes_for(&p, target, &more)?;
        let page = AuthorizePage {
            service: p.name.clone(),
            display_name: p.display_name.clone(),
            description: p.description.clone(),
            provider_host: if p.is_demo {
                "the demo provider built into this tokenvault".to_string()
            } else {
                p.authorize_url.host_str().unwrap_or_default().to_string()
            },
            more_scopes: more.iter().filter(|s| !target.is_some_and(|t| t.granted().contains(s))).cloned().collect(),
            more_scopes_param: more.join(","),
            scopes: all,
            redirect_uri: app.settings.redirect_uri(&p.name),
            configured,
            client_id_path: p.client_id_path(),
            is_admin: user.is_admin,
            already_connected: !rows.is_empty(),
            reconnect: existing.is_some_and(|c| c.status == ConnectionStatus::ReconnectRequired),
            connection: target.map(|c| c.id),
            account_label: existing.and_then(|c| c.account_label.clone().or_else(|| c.account().map(|a| a.id))),
            can_add_account: !rows.is_empty() && identifies(&p),
            csrf_token: user.csrf_token.clone(),
            next: return_path(next),
        };
        let title = format!("Connect {}", p.display_name);
        Ok(Template::render("services/authorize", Page::new(layout, title, page)))
    }
}

/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct AuthorizeForm {
    csrf_token: String,
    next: Option<String>,
    /// Reconnect (or upgrade) this connection. Like the fields below, every value given is kept,
    /// so that a repeated or malformed one is refused (`web::fields`) rather than dropped.
    connection: Vec<String>,
    /// "Connect another account" (`true`).
    add_account: Vec<String>,
    /// More scopes to ask for, comma- or space-separated.
    scopes: Vec<String>,
}

impl CsrfField for AuthorizeForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// The Authorize button: create the flow and send the browser to the provider (303).
#[post("/services/<service>/authorize", data = "<form>")]
async fn authorize(
    app: &State<AppState>,
    user: &CurrentUser,
    service: &str,
    form: Csrf<AuthorizeForm>,
) -> AppResult<Redirect> {
    let intent = Intent {
        connection: fields::connection_id(&form.connection)?,
        add_account: fields::flag("add_account", &form.add_account)?,
        more_scopes: scope_param(fields::once("scopes", &form.scopes)?),
    };
    let p = provider(app, service)?;
    let return_to = return_path(form.next.as_deref());
    let url = flow::start(&app.db, &app.cipher, &app.settings, user, &p, &return_to, &intent).await?;
    tracing::info!(user_id = user.id, service = %p.name, connection = ?intent.connection, add_account = intent.add_account, "authorization started");
    Ok(Redirect::to(url.to_string()))
}

/// A response that tells browsers not to keep or pass on the URL that led here.
pub struct NoTrace<R>(R);

impl<'r, 'o: 'r, R: Responder<'r, 'o>> Responder<'r, 'o> for NoTrace<R> {
    fn respond_to(self, req: &'r rocket::Request<'_>) -> rocket::response::Result<'o> {
        let mut res = self.0.respond_to(req)?;
        res.set_header(Header::new("Referrer-Policy", "no-referrer"));
        res.set_header(Header::new("Cache-Control", "no-store"));
        Ok(res)
    }
}

#[derive(Serialize)]
struct Cancelled {
    service: String,
    display_name: String,
}

/// The redirect_uri: check state, exchange the code, store the tokens, then 303 to a clean URL.
#[get("/services/<service>/callback")]
async fn callback(
    app: &State<AppState>,
    user: Option<&CurrentUser>,
    layout: Layout,
    service: &str,
    params: CallbackParams,
) -> NoTrace<AppResult<Result<Redirect, (rocket::http::Status, Template)>>> {
    NoTrace(finish_callback(app, user, layout, service, params).await)
}

async fn finish_callback(
    app: &AppState,
    user: Option<&CurrentUser>,
    layout: Layout,
    service: &str,
    params: CallbackParams,
) -> AppResult<Result<Redirect, (rocket::http::Status, Template)>> {
    let p = provider(app, service)?;
    let finished = flow::finish(&app.access(), user, &p, params).await;
    match finished? {
        Finished::Connected { return_to, connection_id, already_connected } => {
            tracing::info!(service = %p.name, connection_id, already_connected, "service connected");
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("next", &return_to).append_pair("connection", &connection_id.to_string());
            if already_connected {
                query.append_pair("already_connected", "true");
            }
            let query = query.finish();
            let to = format!("/services/{}/connected?{query}", p.name);
            // No flash here: Rocket's flash cookie is SameSite=Strict and would not reach the next
            // page of a redirect chain that began at the provider; the greeting page says it all.
            Ok(Ok(Redirect::to(to)))
        }
        Finished::Cancelled => {
            let body = Cancelled { service: p.name.clone(), display_name: p.display_name.clone() };
            Ok(Err((
                rocket::http::Status::Ok,
                Template::render("services/cancelled", Page::new(layout, "Connection cancelled", body)),
            )))
        }
        Finished::AccountMismatch { connection_id, expected, got, return_to } => {
            tracing::info!(service = %p.name, connection_id, "reconnect refused: another account");
            let (expected_name, got_name) = mismatch_names(expected.as_ref(), got.as_ref());
            let body = MismatchPage {
                service: p.name.clone(),
                display_name: p.display_name.clone(),
                connection_id,
                expected: expected_name,
                got: got_name,
                can_add: got.is_some(),
                csrf_token: user.map(|u| u.csrf_token.clone()).unwrap_or_default(),
                next: return_to,
            };
            // 409: the reconnect could not be carried out as asked; nothing was stored.
            let page = Template::render("services/account_mismatch", Page::new(layout, "Another account", body));
            Ok(Err((rocket::http::Status::Conflict, page)))
        }
    }
}

/// How the account-mismatch page names the account being reconnected and the one the provider
/// answered for: by label (else id) — and, when both have the same label (one email at two
/// tenants, two profiles with one name), by label and id, so that the two can be told apart.
fn mismatch_names(expected: Option<&Account>, got: Option<&Account>) -> (String, String) {
    let label = |a: Option<&Account>| {
        a.map(|a| a.label.clone().unwrap_or_else(|| a.id.clone())).unwrap_or_else(|| "an unknown account".into())
    };
    let (e, g) = (label(expected), label(got));
    if e != g {
        return (e, g);
    }
    let with_id = |name: String, a: Option<&Account>| match a {
        Some(a) if a.label.is_some() => format!("{name} ({})", a.id),
        _ => name,
    };
    (with_id(e, expected), with_id(g, got))
}

#[derive(Serialize)]
struct MismatchPage {
    service: String,
    display_name: String,
    connection_id: i64,
    /// The account of the connection being reconnected, and the one the provider answered for.
    expected: String,
    got: String,
    can_add: bool,
    csrf_token: String,
    next: String,
}

#[derive(Serialize)]
struct ConnectedPage {
    service: String,
    display_name: String,
    username: String,
    connection_id: i64,
    account_id: String,
    account_label: Option<String>,
    /// Asked for and not granted (a provider may grant fewer: not a failure).
    not_granted: Vec<String>,
    scopes: Vec<String>,
    expires: Option<String>,
    expires_utc: Option<String>,
    has_refresh_token: bool,
    /// "Connect another account" came back with this account, which was connected already: its
    /// connection was renewed, no account was added (`#account-already-connected`).
    already_connected: bool,
    next: String,
}

#[get("/services/<service>/connected?<next>&<connection>&<already_connected>")]
async fn connected(
    app: &State<AppState>,
    user: &CurrentUser,
    layout: Layout,
    service: &str,
    next: Option<&str>,
    connection: Vec<String>,
    already_connected: Option<bool>,
) -> AppResult<Template> {
    let connection = fields::connection_id(&connection)?;
    let p = provider(app, service)?;
    let (which, name) = (Which { user_id: user.id, id: connection }, p.name.clone());
    let conn = app.db.run(move |c| Ok(connections::find_which(c, which, &name)?)).await?.ok_or(AppError::NotFound)?;
    let granted = conn.granted();
    let page = ConnectedPage {
        service: p.name.clone(),
        display_name: p.display_name.clone(),
        username: user.username.clone(),
        connection_id: conn.id,
        account_id: conn.account_id.clone(),
        account_label: conn.account_label.clone(),
        not_granted: conn.requested().into_iter().filter(|s| !granted.contains(s)).collect(),
        scopes: granted,
        expires: conn.expires_at.map(|e| relative_time(e, now())),
        expires_utc: conn.expires_at.map(format_utc),
        has_refresh_token: conn.refresh_token.is_some(),
        already_connected: already_connected.unwrap_or(false),
        next: return_path(next),
    };
    let title = format!("{} connected", p.display_name);
    Ok(Template::render("services/connected", Page::new(layout, title, page)))
}

/// Where to go after a connect: a same-site `next`, else My Settings → OAuth2 Services.
fn return_path(next: Option<&str>) -> String {
    next.and_then(safe_next).unwrap_or_else(|| "/settings/oauth2".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatched_accounts_that_share_a_label_are_named_with_their_ids() {
        let acct = |id: &str, label: Option<&str>| Account { id: id.into(), label: label.map(str::to_string) };
        let (work, home) = (acct("u-1", Some("ann@example.com")), acct("u-2", Some("ann@example.com")));
        assert_eq!(
            mismatch_names(Some(&work), Some(&home)),
            ("ann@example.com (u-1)".to_string(), "ann@example.com (u-2)".to_string())
        );
        let other = acct("u-3", Some("bob@example.com"));
        assert_eq!(mismatch_names(Some(&work), Some(&other)).1, "bob@example.com", "labels that differ suffice");
        assert_eq!(mismatch_names(Some(&work), None).1, "an unknown account");
        assert_eq!(mismatch_names(Some(&acct("u-1", None)), Some(&acct("u-2", None))).0, "u-1", "ids as labels");
    }
}
