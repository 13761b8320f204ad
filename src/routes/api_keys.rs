//! My Settings → API keys (`/settings/api-keys`): create (shown once), list, revoke.

use crate::util::ExposeSecret;
use rocket::form::FromForm;
use rocket::http::Status;
use rocket::response::Redirect;
use rocket::{get, post, routes, uri, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::auth::api_key::{self, Capability, KeyScope};
use crate::auth::{Csrf, CsrfField, CsrfOnly, CurrentUser};
use crate::db::models::api_keys;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::{format_utc, now, relative_time};
use crate::web::{Flash, Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![page, create, revoke]
}

#[derive(Serialize)]
struct KeyView {
    id: i64,
    name: String,
    prefix: String,
    created: String,
    created_utc: String,
    last_used: Option<String>,
    last_used_ip: Option<String>,
    /// "all services" or the list.
    services: String,
    /// "full access" or the list.
    capabilities: String,
    limited: bool,
    expires: Option<String>,
    expires_utc: Option<String>,
    expired: bool,
}

#[derive(Serialize)]
struct Choice {
    value: String,
    /// `value` usable in an element id (`connections:read` → `connections-read`).
    slug: String,
    label: String,
}

impl Choice {
    fn new(value: &str, label: &str) -> Choice {
        Choice { value: value.into(), slug: value.replace(':', "-"), label: label.into() }
    }
}

#[derive(Serialize)]
struct KeysPage {
    keys: Vec<KeyView>,
    csrf_token: String,
    /// A key just created: shown this once.
    new_key: Option<String>,
    new_key_name: Option<String>,
    /// Keys revoked to stay within `max_api_keys_per_user` when that key was created.
    evicted: Vec<EvictedView>,
    max_keys: i64,
    error: Option<String>,
    api_base: String,
    /// The services and capabilities a new key may be limited to.
    services: Vec<Choice>,
    capabilities: Vec<Choice>,
}

#[derive(Serialize)]
struct EvictedView {
    name: String,
    prefix: String,
}

/// What the page shows once after creating a key.
struct NewKeyView {
    name: String,
    key: String,
    evicted: Vec<EvictedView>,
}

async fn render(
    app: &AppState,
    user: &CurrentUser,
    layout: Layout,
    new_key: Option<NewKeyView>,
    error: Option<String>,
) -> AppResult<Template> {
    let uid = user.id;
    let keys = app.db.run(move |conn| Ok(api_keys::list_for_user(conn, uid)?)).await?;
    let now = now();
    let (new_key_name, new_key, evicted) = match new_key {
        Some(k) => (Some(k.name), Some(k.key), k.evicted),
        None => (None, None, Vec::new()),
    };
    let page = KeysPage {
        keys: keys
            .into_iter()
            .map(|k| {
                let scope = KeyScope::of(&k);
                KeyView {
                    id: k.id,
                    created: relative_time(k.created_at, now),
                    created_utc: format_utc(k.created_at),
                    last_used: k.last_used_at.map(|t| relative_time(t, now)),
                    last_used_ip: k.last_used_ip,
                    services: scope.services_text(),
                    capabilities: scope.capabilities_text(),
                    limited: scope != KeyScope::default(),
                    expires: scope.expires_at.map(|t| relative_time(t, now)),
                    expires_utc: scope.expires_at.map(format_utc),
                    expired: scope.is_expired(now),
                    name: k.name,
                    prefix: k.prefix,
                }
            })
            .collect(),
        csrf_token: user.csrf_token.clone(),
        max_keys: app.settings.api.max_keys_per_user,
        new_key_name,
        new_key,
        evicted,
        error,
        api_base: app.settings.url("/api/v1"),
        services: app.catalog.current().iter().map(|p| Choice::new(&p.name, &p.display_name)).collect(),
        capabilities: Capability::ALL.iter().map(|c| Choice::new(c.as_str(), capability_label(*c))).collect(),
    };
    Ok(Template::render("settings/api_keys", Page::new(layout, "API keys", page)))
}

#[get("/settings/api-keys")]
async fn page(app: &State<AppState>, user: &CurrentUser, layout: Layout) -> AppResult<Template> {
    render(app, user, layout, None, None).await
}

fn capability_label(c: Capability) -> &'static str {
    match c {
        Capability::ConnectionsRead => "list connections",
        Capability::TokenRead => "read access tokens",
        Capability::Proxy => "call services through the proxy",
        Capability::ProxyRead => "call services through the proxy, GET and HEAD only",
    }
}

/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct CreateForm {
    csrf_token: String,
    name: String,
    /// Limit the key to these services (none ticked: all).
    services: Vec<String>,
    /// Limit it to these capabilities (none ticked: all).
    capabilities: Vec<String>,
    /// A lifetime such as `30d`; empty: never expires.
    expires: Option<String>,
}

impl CsrfField for CreateForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// Create a key and show it once, on this response (never in a redirect, cookie or flash).
#[post("/settings/api-keys", data = "<form>")]
async fn create(
    app: &State<AppState>,
    user: &CurrentUser,
    layout: Layout,
    form: Csrf<CreateForm>,
) -> AppResult<(Status, Template)> {
    let uid = user.id;
    let scope = KeyScope::from_input(
        &form.services,
        &form.capabilities,
        form.expires.as_deref(),
        |s| app.catalog.get(s).is_some(),
        now(),
    );
    let created = match scope {
        Ok(scope) => {
            let max_keys = app.settings.api.max_keys_per_user;
            api_key::create_for(app, max_keys, uid, form.name.clone(), scope).await
        }
        Err(message) => Err(AppError::BadRequest(message)),
    };
    match created {
        Ok(created) => {
            tracing::info!(user_id = uid, key_id = created.row.id, "API key created");
            let new_key = NewKeyView {
                name: created.row.name.clone(),
                key: created.key.expose_secret().to_string(),
                evicted: created.evicted.into_iter().map(|k| EvictedView { name: k.name, prefix: k.prefix }).collect(),
            };
            let page = render(app, user, layout, Some(new_key), None).await?;
            Ok((Status::Ok, page))
        }
        Err(AppError::BadRequest(msg)) => {
            Ok((Status::UnprocessableEntity, render(app, user, layout, None, Some(msg)).await?))
        }
        Err(e) => Err(e),
    }
}

#[post("/settings/api-keys/<id>/revoke", data = "<_form>")]
async fn revoke(
    app: &State<AppState>,
    user: &CurrentUser,
    id: i64,
    _form: Csrf<CsrfOnly>,
) -> AppResult<Flash<Redirect>> {
    let uid = user.id;
    if !api_key::revoke(app, uid, id).await? {
        return Err(AppError::NotFound);
    }
    tracing::info!(user_id = uid, key_id = id, "API key revoked");
    Ok(Flash::success(Redirect::to(uri!(page)), "The API key was revoked. It no longer works."))
}
