//! The grants of tokenvault's authorization server as pages: My Settings → Connected apps
//! (`/settings/apps`: every live grant of the user, with its client, what it may do, when and
//! from where it was last used, and Revoke) and `/admin/oauth-clients` (administrators register
//! clients — the secret of a confidential one shown once — and see and revoke every grant).
//! A revocation holds on every instance at the next request: tokens are checked against the
//! grant in the database.

use rocket::form::FromForm;
use rocket::http::Status;
use rocket::response::Redirect;
use rocket::{get, post, routes, uri, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::auth::{AdminUser, Csrf, CsrfField, CsrfOnly, CurrentUser};
use crate::authz::clients::{self, redirect_host, Registration};
use crate::authz::grants::{self, GrantScope};
use crate::changes::{Actor, GrantEnd};
use crate::db::models::authz::{self as model, Client, ClientKind, Grant};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::{format_utc, now, relative_time, ExposeSecret};
use crate::web::{Flash, Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![apps_page, revoke_own, admin_page, admin_register, admin_revoke, admin_delete_client]
}

#[derive(Serialize)]
struct GrantView {
    id: i64,
    client_id: String,
    client_name: String,
    client_host: String,
    /// Capabilities, as scope names.
    capabilities: Vec<String>,
    /// "every service (also later ones)" or the list.
    services: String,
    created: String,
    expires: String,
    expires_utc: String,
    last_used: Option<String>,
    last_used_ip: Option<String>,
    username: Option<String>,
}

fn grant_view(g: &Grant, c: &Client, now: i64, username: Option<String>) -> GrantView {
    let scope = GrantScope::of(g);
    GrantView {
        id: g.id,
        client_id: c.client_id.clone(),
        client_name: c.name.clone(),
        client_host: c.redirect_uris().next().map(redirect_host).unwrap_or_default(),
        capabilities: scope.capability_names(),
        services: match &scope.services {
            None => "every service (also those connected later)".into(),
            Some(s) => s.join(", "),
        },
        created: relative_time(g.created_at, now),
        expires: relative_time(g.expires_at, now),
        expires_utc: format_utc(g.expires_at),
        last_used: g.last_used_at.map(|t| relative_time(t, now)),
        last_used_ip: g.last_used_ip.clone(),
        username,
    }
}

#[derive(Serialize)]
struct AppsPage {
    grants: Vec<GrantView>,
    csrf_token: String,
}

#[get("/settings/apps")]
async fn apps_page(app: &State<AppState>, user: &CurrentUser, layout: Layout) -> AppResult<Template> {
    let uid = user.id;
    let at = now();
    let rows = app.db.run(move |conn| Ok(model::live_grants_for_user(conn, uid, at)?)).await?;
    let page = AppsPage {
        grants: rows.iter().map(|(g, c)| grant_view(g, c, at, None)).collect(),
        csrf_token: user.csrf_token.clone(),
    };
    Ok(Template::render("settings/apps", Page::new(layout, "Connected apps", page)))
}

#[post("/settings/apps/<id>/revoke", data = "<_form>")]
async fn revoke_own(
    app: &State<AppState>,
    user: &CurrentUser,
    id: i64,
    _form: Csrf<CsrfOnly>,
) -> AppResult<Flash<Redirect>> {
    let (by, why) = (Actor::User(user.id), GrantEnd::ByUser);
    if !grants::revoke(&app.db, app.ledger(), app.effects(), id, Some(user.id), by, why).await? {
        return Err(AppError::NotFound);
    }
    tracing::info!(user_id = user.id, grant_id = id, "grant revoked");
    Ok(Flash::success(Redirect::to(uri!(apps_page)), "Access revoked. The app's tokens no longer work."))
}

#[derive(Serialize)]
struct ClientView {
    id: i64,
    client_id: String,
    name: String,
    kind: &'static str,
    redirect_uris: Vec<String>,
    confidential: bool,
    created: String,
}

#[derive(Serialize)]
struct AdminPage {
    clients: Vec<ClientView>,
    grants: Vec<GrantView>,
    csrf_token: String,
    new_client_id: Option<String>,
    new_client_secret: Option<String>,
    error: Option<String>,
}

async fn render_admin(
    app: &AppState,
    admin: &CurrentUser,
    layout: Layout,
    new: Option<clients::Registered>,
    error: Option<String>,
) -> AppResult<Template> {
    let at = now();
    let (all_clients, all_grants) =
        app.db.run(move |conn| Ok((model::list_clients(conn)?, model::all_live_grants(conn, at, 500)?))).await?;
    let page = AdminPage {
        clients: all_clients
            .iter()
            .map(|c| ClientView {
                id: c.id,
                client_id: c.client_id.clone(),
                name: c.name.clone(),
                kind: match c.kind {
                    ClientKind::Admin => "registered here",
                    ClientKind::Dynamic => "dynamic registration",
                    ClientKind::Metadata => "metadata document",
                },
                redirect_uris: c.redirect_uris().map(str::to_string).collect(),
                confidential: c.secret_hash.is_some(),
                created: relative_time(c.created_at, at),
            })
            .collect(),
        grants: all_grants.iter().map(|(g, c, u)| grant_view(g, c, at, Some(u.username.clone()))).collect(),
        csrf_token: admin.csrf_token.clone(),
        new_client_id: new.as_ref().map(|n| n.client.client_id.clone()),
        new_client_secret: new.as_ref().and_then(|n| n.secret.as_ref()).map(|s| s.expose_secret().to_string()),
        error,
    };
    Ok(Template::render("admin/oauth_clients", Page::new(layout, "OAuth clients", page)))
}

#[get("/admin/oauth-clients")]
async fn admin_page(app: &State<AppState>, admin: AdminUser<'_>, layout: Layout) -> AppResult<Template> {
    render_admin(app, admin.0, layout, None, None).await
}

/// No `Debug`: it carries the CSRF token.
#[derive(FromForm)]
pub struct RegisterForm {
    csrf_token: String,
    name: String,
    /// One per line.
    redirect_uris: String,
    confidential: bool,
}

impl CsrfField for RegisterForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// Register a client; its id (and the secret of a confidential one) shown once on this answer.
#[post("/admin/oauth-clients", data = "<form>")]
async fn admin_register(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    layout: Layout,
    form: Csrf<RegisterForm>,
) -> AppResult<(Status, Template)> {
    let form = form.into_inner();
    let uris: Vec<String> = form.redirect_uris.split_whitespace().map(str::to_string).collect();
    let (name, confidential, by) = (form.name.clone(), form.confidential, Actor::User(admin.0.id));
    let registered = app
        .db
        .write(app.ledger(), move |tx| {
            let kind = ClientKind::Admin;
            let r = Registration { kind, name: &name, redirect_uris: &uris, confidential, by, address: None };
            clients::register(tx, r)
        })
        .await
        .map(|done| done.settle(app.effects()));
    match registered {
        Ok(r) => {
            tracing::info!(user_id = admin.0.id, client = %r.client.client_id, "OAuth client registered");
            Ok((Status::Ok, render_admin(app, admin.0, layout, Some(r), None).await?))
        }
        Err(AppError::BadRequest(msg)) => {
            Ok((Status::UnprocessableEntity, render_admin(app, admin.0, layout, None, Some(msg)).await?))
        }
        Err(e) => Err(e),
    }
}

#[post("/admin/oauth-clients/grants/<id>/revoke", data = "<_form>")]
async fn admin_revoke(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    id: i64,
    _form: Csrf<CsrfOnly>,
) -> AppResult<Flash<Redirect>> {
    let (by, why) = (Actor::User(admin.0.id), GrantEnd::ByAdmin);
    if !grants::revoke(&app.db, app.ledger(), app.effects(), id, None, by, why).await? {
        return Err(AppError::NotFound);
    }
    tracing::info!(user_id = admin.0.id, grant_id = id, "grant revoked by an administrator");
    Ok(Flash::success(Redirect::to(uri!(admin_page)), "The grant was revoked."))
}

/// Delete a client: its live grants revoked (each audited and sent as `grant.revoked`), its codes
/// and tokens deleted, in one unit of work; its tokens are refused on every instance at once. A
/// metadata-document client comes back if the document is used again, but without a grant: its
/// users must consent again.
#[post("/admin/oauth-clients/<id>/delete", data = "<_form>")]
async fn admin_delete_client(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    id: i64,
    _form: Csrf<CsrfOnly>,
) -> AppResult<Flash<Redirect>> {
    if !clients::delete(&app.db, app.ledger(), app.effects(), id, Actor::User(admin.0.id)).await? {
        return Err(AppError::NotFound);
    }
    tracing::info!(user_id = admin.0.id, client = id, "OAuth client deleted by an administrator");
    Ok(Flash::success(Redirect::to(uri!(admin_page)), "The client was deleted and its grants revoked."))
}
