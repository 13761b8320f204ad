//! `/admin/vault`: administrators set, replace and delete project-vault values. Values are never
//! shown again; the page lists which keys are set.

use rocket::form::FromForm;
use rocket::response::Redirect;
use rocket::{get, post, routes, uri, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::audit;
use crate::auth::{AdminUser, Csrf, CsrfField};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::{format_utc, now, relative_time};
use crate::vault::store as vault;
use crate::web::{Flash, Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![vault_page, vault_set, vault_delete]
}

#[derive(Serialize)]
struct EntryView {
    path: String,
    set: bool,
    updated: Option<String>,
    updated_utc: Option<String>,
    updated_by: Option<String>,
    /// Which service wants this key, if any.
    service: Option<String>,
}

#[derive(Serialize)]
struct VaultPage {
    entries: Vec<EntryView>,
    csrf_token: String,
    redirect_uris: Vec<(String, String)>,
}

#[get("/admin/vault")]
async fn vault_page(app: &State<AppState>, admin: AdminUser<'_>, layout: Layout) -> AppResult<Template> {
    let stored = app.db.run(vault::list).await?;
    let now = now();
    let mut entries: Vec<EntryView> = Vec::new();
    let catalog = app.catalog.current();
    for p in catalog.iter() {
        for path in [p.client_id_path(), p.client_secret_path()] {
            let found = stored.iter().find(|e| e.path == path);
            entries.push(EntryView {
                set: found.is_some(),
                updated: found.map(|e| relative_time(e.updated_at, now)),
                updated_utc: found.map(|e| format_utc(e.updated_at)),
                updated_by: found.map(|e| e.updated_by.clone()),
                service: Some(p.display_name.clone()),
                path,
            });
        }
    }
    for e in &stored {
        if !entries.iter().any(|v| v.path == e.path) {
            entries.push(EntryView {
                path: e.path.clone(),
                set: true,
                updated: Some(relative_time(e.updated_at, now)),
                updated_utc: Some(format_utc(e.updated_at)),
                updated_by: Some(e.updated_by.clone()),
                service: None,
            });
        }
    }
    let redirect_uris = catalog.iter().map(|p| (p.display_name.clone(), app.settings.redirect_uri(&p.name))).collect();
    let page = VaultPage { entries, csrf_token: admin.0.csrf_token.clone(), redirect_uris };
    Ok(Template::render("admin/vault", Page::new(layout, "Project vault", page)))
}

#[derive(FromForm)]
pub struct SetForm {
    csrf_token: String,
    path: String,
    value: String,
}

impl std::fmt::Debug for SetForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetForm").field("path", &self.path).field("value", &"[redacted]").finish()
    }
}

impl CsrfField for SetForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

#[post("/admin/vault", data = "<form>")]
async fn vault_set(app: &State<AppState>, admin: AdminUser<'_>, form: Csrf<SetForm>) -> AppResult<Flash<Redirect>> {
    let form = form.into_inner();
    let path = form.path.trim().to_string();
    let value = crate::util::secret(form.value.trim_end_matches(['\r', '\n']).to_string());
    let (cipher, by, p, uid) = (app.cipher.clone(), admin.0.username.clone(), path.clone(), admin.0.id);
    match app.db.run(move |conn| vault::set_recorded(conn, &cipher, &p, &value, audit::Actor::User(uid), &by)).await {
        Ok(committed) => {
            committed.settle(app.effects());
            tracing::info!(user_id = admin.0.id, path = %path, "vault value set");
            Ok(Flash::success(
                Redirect::to(uri!(vault_page)),
                format!("{path} was saved. Its value will not be shown again."),
            ))
        }
        Err(AppError::BadRequest(msg)) => Ok(Flash::error(Redirect::to(uri!(vault_page)), msg)),
        Err(e) => Err(e),
    }
}

/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct DeleteForm {
    csrf_token: String,
    path: String,
}

impl CsrfField for DeleteForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

#[post("/admin/vault/delete", data = "<form>")]
async fn vault_delete(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    form: Csrf<DeleteForm>,
) -> AppResult<Flash<Redirect>> {
    let path = form.path.clone();
    let (p, c, uid) = (path.clone(), app.cipher.clone(), admin.0.id);
    let deleted = app.db.run(move |conn| vault::delete_recorded(conn, &c, &p, audit::Actor::User(uid))).await?;
    if !deleted.settle(app.effects()) {
        return Err(AppError::NotFound);
    }
    tracing::info!(user_id = admin.0.id, path = %path, "vault value deleted");
    Ok(Flash::success(Redirect::to(uri!(vault_page)), format!("{path} was deleted.")))
}
