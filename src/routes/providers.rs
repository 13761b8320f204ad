//! `/admin/providers`: every provider with where its settings come from, whether its client
//! credentials are set, its redirect URI, its connections and their health; add (from a preset,
//! by issuer URL, or key by key), edit, disable/enable, revert, delete (with its connections when
//! the box is ticked) and Test — the changes of `crate::oauth::managed`, in effect on this instance
//! when the response is sent and on the others within their invalidation poll.

use rocket::form::FromForm;
use rocket::http::Status;
use rocket::response::Redirect;
use rocket::{get, post, routes, uri, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::{AdminUser, Csrf, CsrfField};
use crate::changes::Committed;
use crate::db::models::connections::Which;
use crate::error::{AppError, AppResult};
use crate::oauth::managed::{self, Check, Editor, Egress, NewProvider, Origin};
use crate::state::AppState;
use crate::util::{format_utc, now, relative_time, Secret};
use crate::web::{Flash, Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![page, add, update, disable, enable, revert, remove, test]
}

#[derive(Serialize)]
struct ProviderView {
    name: String,
    display_name: String,
    origin: &'static str,
    enabled: bool,
    credentials: &'static str,
    redirect_uri: String,
    connections: i64,
    degraded: i64,
    reconnect_required: i64,
    version: i64,
    /// Why the stored settings cannot be used.
    unusable: Option<String>,
    /// The keys set in the app, one `key = value` a line (or what a refused edit typed).
    settings: String,
    demo: bool,
    added: bool,
    edited: bool,
    updated: Option<String>,
    updated_utc: Option<String>,
    updated_by: Option<String>,
    /// A refused edit of this provider.
    error: Option<String>,
    /// The Test button's results, on its response.
    checks: Option<Vec<Check>>,
}

#[derive(Default, Serialize)]
struct AddDraft {
    preset: String,
    name: String,
    issuer: String,
    client_id: String,
    settings: String,
    error: Option<String>,
    /// The endpoints an issuer's discovery found, shown for confirmation before saving.
    discovered: Option<Vec<Found>>,
}

#[derive(Serialize)]
struct Found {
    what: &'static str,
    url: String,
}

#[derive(Serialize)]
struct PresetView {
    name: &'static str,
    display_name: String,
}

#[derive(Serialize)]
struct ProvidersPage {
    providers: Vec<ProviderView>,
    presets: Vec<PresetView>,
    csrf_token: String,
    add: AddDraft,
}

/// A refused edit (its provider, message and typed lines) or Test results, shown on one row.
#[derive(Default)]
struct RowExtra {
    name: String,
    error: Option<String>,
    settings: Option<String>,
    checks: Option<Vec<Check>>,
}

fn egress(app: &AppState) -> Egress {
    Egress::of(&app.settings)
}

async fn render(
    app: &AppState,
    admin: &AdminUser<'_>,
    layout: Layout,
    add: AddDraft,
    extra: RowExtra,
) -> AppResult<Template> {
    let live = app.catalog.clone();
    let (health, stored) = app
        .db
        .run(move |conn| {
            // Changes made on another instance show at once.
            live.reload(conn)?;
            Ok::<_, AppError>((managed::connection_health(conn)?, crate::vault::store::list(conn)?))
        })
        .await?;
    let has = |path: String| stored.iter().any(|e| e.path == path);
    let t = now();
    let providers = app
        .catalog
        .entries()
        .iter()
        .map(|e| {
            let (connections, degraded, reconnect_required) = health.get(&e.name).copied().unwrap_or_default();
            let demo = e.provider.as_ref().is_ok_and(|p| p.is_demo);
            let credentials_set =
                demo || (has(format!("{}.client_id", e.name)) && has(format!("{}.client_secret", e.name)));
            let mine = (extra.name == e.name).then_some(&extra);
            ProviderView {
                name: e.name.clone(),
                display_name: e.provider.as_ref().map(|p| p.display_name.clone()).unwrap_or_else(|_| e.name.clone()),
                origin: e.origin.as_str(),
                enabled: e.enabled,
                credentials: if credentials_set { "set" } else { "missing" },
                redirect_uri: app.settings.redirect_uri(&e.name),
                connections,
                degraded,
                reconnect_required,
                version: e.version,
                unusable: e.provider.as_ref().err().cloned(),
                settings: mine.and_then(|m| m.settings.clone()).unwrap_or_else(|| managed::toml_lines(&e.settings)),
                demo,
                added: e.origin == Origin::Added,
                edited: e.origin == Origin::Edited,
                updated: e.updated.as_ref().map(|(at, _)| relative_time(*at, t)),
                updated_utc: e.updated.as_ref().map(|(at, _)| format_utc(*at)),
                updated_by: e.updated.as_ref().map(|(_, by)| by.clone()),
                error: mine.and_then(|m| m.error.clone()),
                checks: mine.and_then(|m| m.checks.clone()),
            }
        })
        .collect();
    let presets = crate::oauth::providers::preset_names()
        .into_iter()
        .map(|name| PresetView {
            name,
            display_name: crate::oauth::providers::preset(name)
                .and_then(|p| p.display_name.clone())
                .unwrap_or_default(),
        })
        .collect();
    let body = ProvidersPage { providers, presets, csrf_token: admin.0.csrf_token.clone(), add };
    Ok(Template::render("admin/providers", Page::new(layout, "Providers", body)))
}

/// Run a change as the signed-in administrator, settled; the catalog is reloaded at once.
async fn edit<T: Send + 'static>(
    app: &AppState,
    admin: &AdminUser<'_>,
    f: impl FnOnce(&Editor<'_>, &mut crate::db::Conn) -> AppResult<Committed<T>> + Send + 'static,
) -> AppResult<T> {
    let (live, cipher, egress) = (app.catalog.clone(), app.cipher.clone(), egress(app));
    let (user_id, username) = (admin.0.id, admin.0.username.clone());
    let committed = app
        .db
        .run(move |conn| {
            let editor = Editor {
                live: &live,
                cipher: &cipher,
                actor: crate::audit::Actor::User(user_id),
                by: &username,
                egress,
            };
            let committed = f(&editor, conn)?;
            // In effect on this instance before the response (the others follow their feed).
            live.reload(conn)?;
            Ok(committed)
        })
        .await?;
    Ok(committed.settle(app.effects()))
}

#[get("/admin/providers")]
async fn page(app: &State<AppState>, admin: AdminUser<'_>, layout: Layout) -> AppResult<Template> {
    render(app, &admin, layout, AddDraft::default(), RowExtra::default()).await
}

/// No `Debug`: it carries the CSRF token and the client secret.
#[derive(FromForm)]
pub struct AddForm {
    csrf_token: String,
    #[field(default = String::new())]
    preset: String,
    name: String,
    #[field(default = String::new())]
    issuer: String,
    #[field(default = String::new())]
    client_id: String,
    #[field(default = String::new())]
    client_secret: String,
    /// More keys of the provider table, `key = value` a line (preset parameters, or a whole
    /// custom provider).
    #[field(default = String::new())]
    settings: String,
}

impl CsrfField for AddForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

fn refused(e: impl std::fmt::Display) -> AppError {
    AppError::Refused(e.to_string())
}

fn secret_of(text: &str) -> Option<Secret> {
    (!text.trim().is_empty()).then(|| crate::util::secret(text.trim().to_string()))
}

/// The provider table an add form describes (OpenID Connect discovery run for an issuer).
async fn add_settings(app: &AppState, form: &AddForm) -> AppResult<Map<String, Value>> {
    let mut settings = managed::parse_lines(&form.settings).map_err(|e| refused(format!("Settings: {e}")))?;
    if !form.preset.trim().is_empty() {
        settings.insert("preset".into(), Value::String(form.preset.trim().to_string()));
    }
    if !form.issuer.trim().is_empty() {
        let issuer = form.issuer.trim().to_string();
        // The issuer's discovery goes to an address the egress rule allows (checked again, on
        // every endpoint it names, when the provider is saved).
        let url = crate::config::parse_endpoint("issuer", &issuer).map_err(|e| refused(format!("Issuer: {e}")))?;
        let rule = egress(app);
        if !(rule.private_urls || (rule.loopback && is_loopback_host(&url))) {
            crate::webhooks::egress::check_public_host(&url).map_err(|e| refused(format!("Issuer: {e}")))?;
        }
        settings.insert("issuer".into(), Value::String(issuer));
        let cfg = managed::config_of(&settings).map_err(refused)?;
        let found = crate::oauth::providers::discovered_config(app.http.set_in_app(), form.name.trim(), &cfg)
            .await
            .map_err(|e| refused(format!("Issuer: {e}")))?;
        settings = managed::settings_of(&found);
    }
    if settings.is_empty() {
        return Err(refused("Pick a preset, give an issuer URL, or enter the provider's keys"));
    }
    Ok(settings)
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Discovery's findings, checked, shown before anything is saved: the add form again with the
/// provider's keys filled in (the issuer field emptied), the client secret to be typed again.
async fn confirm_discovered(app: &AppState, admin: &AdminUser<'_>, form: &AddForm) -> AppResult<AddDraft> {
    let settings = add_settings(app, form).await?;
    let (live, cipher, egress) = (app.catalog.clone(), app.cipher.clone(), egress(app));
    let (name, s) = (form.name.trim().to_string(), settings.clone());
    let user_id = admin.0.id;
    let provider = app
        .db
        .run(move |conn| {
            let editor =
                Editor { live: &live, cipher: &cipher, actor: crate::audit::Actor::User(user_id), by: "", egress };
            editor.preview(conn, &name, &s)
        })
        .await?;
    let mut discovered = vec![
        Found { what: "authorize", url: provider.authorize_url.to_string() },
        Found { what: "token", url: provider.token_url.to_string() },
    ];
    let optional = [
        ("userinfo", provider.account_url.as_ref().map(|u| u.to_string())),
        ("jwks", provider.jwks_url.as_ref().map(|u| u.to_string())),
        ("revocation", provider.revoke_url.clone()),
    ];
    discovered.extend(optional.into_iter().filter_map(|(what, url)| url.map(|url| Found { what, url })));
    Ok(AddDraft {
        preset: String::new(),
        name: form.name.clone(),
        issuer: String::new(),
        client_id: form.client_id.clone(),
        settings: managed::toml_lines(&settings),
        error: None,
        discovered: Some(discovered),
    })
}

/// Add a provider; a refused form answers 422 with its message and what was typed (never the
/// secret). Given an issuer URL, discovery runs and its endpoints are shown for confirmation first.
#[post("/admin/providers", data = "<form>")]
async fn add(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    layout: Layout,
    form: Csrf<AddForm>,
) -> AppResult<Result<Flash<Redirect>, (Status, Template)>> {
    let form = form.into_inner();
    let name = form.name.trim().to_string();
    if !form.issuer.trim().is_empty() {
        let outcome = confirm_discovered(app, &admin, &form).await;
        let (status, draft) = match outcome {
            Ok(draft) => (Status::Ok, draft),
            Err(AppError::Refused(message)) => (
                Status::UnprocessableEntity,
                AddDraft {
                    preset: form.preset,
                    name: form.name,
                    issuer: form.issuer,
                    client_id: form.client_id,
                    settings: form.settings,
                    error: Some(message),
                    discovered: None,
                },
            ),
            Err(e) => return Err(e),
        };
        return Ok(Err((status, render(app, &admin, layout, draft, RowExtra::default()).await?)));
    }
    let outcome = match add_settings(app, &form).await {
        Ok(settings) => {
            let new = NewProvider {
                name: name.clone(),
                settings,
                client_id: Some(form.client_id.trim().to_string()).filter(|c| !c.is_empty()),
                client_secret: secret_of(&form.client_secret),
            };
            edit(app, &admin, move |ed, conn| ed.add(conn, &new)).await
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => {
            tracing::info!(user_id = admin.0.id, provider = %name, "provider added");
            let message = format!(
                "{name} was added and can be connected now. Register {} at the provider.",
                app.settings.redirect_uri(&name)
            );
            Ok(Ok(Flash::success(Redirect::to(uri!(page)), message)))
        }
        Err(AppError::Refused(message)) => {
            let draft = AddDraft {
                preset: form.preset,
                name: form.name,
                issuer: form.issuer,
                client_id: form.client_id,
                settings: form.settings,
                error: Some(message),
                discovered: None,
            };
            Ok(Err((Status::UnprocessableEntity, render(app, &admin, layout, draft, RowExtra::default()).await?)))
        }
        Err(e) => Err(e),
    }
}

/// No `Debug`: it carries the CSRF token and the client secret.
#[derive(FromForm)]
pub struct UpdateForm {
    csrf_token: String,
    version: i64,
    #[field(default = String::new())]
    settings: String,
    #[field(default = String::new())]
    client_id: String,
    #[field(default = String::new())]
    client_secret: String,
}

impl CsrfField for UpdateForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// Save the keys set in the app (the form's lines replace them) and new client credentials.
#[post("/admin/providers/<name>", data = "<form>")]
async fn update(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    layout: Layout,
    name: &str,
    form: Csrf<UpdateForm>,
) -> AppResult<Result<Flash<Redirect>, (Status, Template)>> {
    let form = form.into_inner();
    let current = app.catalog.entry(name).ok_or(AppError::NotFound)?;
    let outcome = match managed::parse_lines(&form.settings) {
        Ok(mut set) => {
            for old in current.settings.keys() {
                set.entry(old.clone()).or_insert(Value::Null);
            }
            let (n, version) = (name.to_string(), form.version);
            let client_id = Some(form.client_id.trim().to_string()).filter(|c| !c.is_empty());
            let secret = secret_of(&form.client_secret);
            edit(app, &admin, move |ed, conn| ed.edit(conn, &n, version, &set, client_id.as_deref(), secret.as_ref()))
                .await
        }
        Err(e) => Err(refused(format!("Settings: {e}"))),
    };
    match outcome {
        Ok(()) => {
            tracing::info!(user_id = admin.0.id, provider = %name, "provider edited");
            Ok(Ok(Flash::success(Redirect::to(uri!(page)), format!("{name} was saved and is in effect."))))
        }
        Err(AppError::Refused(error)) => {
            let extra =
                RowExtra { name: name.to_string(), error: Some(error), settings: Some(form.settings), checks: None };
            let page = render(app, &admin, layout, AddDraft::default(), extra).await?;
            Ok(Err((Status::UnprocessableEntity, page)))
        }
        Err(e) => Err(e),
    }
}

/// No `Debug`: it carries the CSRF token.
#[derive(FromForm)]
pub struct VersionForm {
    csrf_token: String,
    version: i64,
    /// Delete: "revoke and delete its N connections" ticked.
    #[field(default = false)]
    with_connections: bool,
}

impl CsrfField for VersionForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

#[post("/admin/providers/<name>/disable", data = "<form>")]
async fn disable(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    name: &str,
    form: Csrf<VersionForm>,
) -> AppResult<Flash<Redirect>> {
    let (n, version) = (name.to_string(), form.version);
    edit(app, &admin, move |ed, conn| ed.set_enabled(conn, &n, Some(version), false)).await?;
    tracing::info!(user_id = admin.0.id, provider = %name, "provider disabled");
    let message = format!("{name} is disabled: hidden from users and the API; its connections are kept.");
    Ok(Flash::success(Redirect::to(uri!(page)), message))
}

#[post("/admin/providers/<name>/enable", data = "<form>")]
async fn enable(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    name: &str,
    form: Csrf<VersionForm>,
) -> AppResult<Flash<Redirect>> {
    let (n, version) = (name.to_string(), form.version);
    edit(app, &admin, move |ed, conn| ed.set_enabled(conn, &n, Some(version), true)).await?;
    tracing::info!(user_id = admin.0.id, provider = %name, "provider enabled");
    Ok(Flash::success(Redirect::to(uri!(page)), format!("{name} is enabled again.")))
}

#[post("/admin/providers/<name>/revert", data = "<form>")]
async fn revert(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    name: &str,
    form: Csrf<VersionForm>,
) -> AppResult<Flash<Redirect>> {
    let (n, version) = (name.to_string(), form.version);
    match edit(app, &admin, move |ed, conn| ed.revert(conn, &n, version)).await {
        Ok(()) => {}
        Err(AppError::Refused(message)) => return Ok(Flash::error(Redirect::to(uri!(page)), message)),
        Err(e) => return Err(e),
    }
    tracing::info!(user_id = admin.0.id, provider = %name, "provider reverted");
    Ok(Flash::success(Redirect::to(uri!(page)), format!("{name} was reverted: its Rocket.toml table applies again.")))
}

/// Delete an added provider; with the box ticked, its connections are revoked at the provider
/// (where it can) and deleted first, each recorded as a user's revocation is.
#[post("/admin/providers/<name>/delete", data = "<form>")]
async fn remove(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    name: &str,
    form: Csrf<VersionForm>,
) -> AppResult<Flash<Redirect>> {
    let entry = app.catalog.entry(name).ok_or(AppError::NotFound)?;
    if entry.origin != Origin::Added {
        let message = format!("{name} comes from Rocket.toml: remove its table there, or disable it here.");
        return Ok(Flash::error(Redirect::to(uri!(page)), message));
    }
    let n = name.to_string();
    let rows = app.db.run(move |conn| connections_of(conn, &n)).await?;
    if !rows.is_empty() && !form.with_connections {
        let message = format!(
            "{name} has {} connection(s): tick \"revoke and delete its connections\" to delete them with it.",
            rows.len()
        );
        return Ok(Flash::error(Redirect::to(uri!(page)), message));
    }
    if let Ok(provider) = &entry.provider {
        for (user_id, id) in &rows {
            match crate::oauth::revoke::revoke_and_delete(&app.access(), Which::id(*user_id, *id), provider).await {
                Ok(_) | Err(AppError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let (n, version) = (name.to_string(), form.version);
    edit(app, &admin, move |ed, conn| ed.delete(conn, &n, Some(version))).await?;
    tracing::info!(user_id = admin.0.id, provider = %name, connections = rows.len(), "provider deleted");
    let message = format!("{name} was deleted ({} connection(s) revoked and deleted).", rows.len());
    Ok(Flash::success(Redirect::to(uri!(page)), message))
}

/// Every connection of `service` (user id, connection id).
fn connections_of(conn: &mut crate::db::Conn, service: &str) -> AppResult<Vec<(i64, i64)>> {
    use crate::db::schema::connections;
    use diesel::prelude::*;
    Ok(crate::on_conn!(conn, c => connections::table
        .filter(connections::service.eq(service))
        .select((connections::user_id, connections::id))
        .load::<(i64, i64)>(c))?)
}

/// No `Debug`: it carries the CSRF token.
#[derive(FromForm)]
pub struct TestForm {
    csrf_token: String,
}

impl CsrfField for TestForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// Check the provider's endpoints and credentials; the results on this response.
#[post("/admin/providers/<name>/test", data = "<_form>")]
async fn test(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    layout: Layout,
    name: &str,
    _form: Csrf<TestForm>,
) -> AppResult<Template> {
    let entry = app.catalog.entry(name).ok_or(AppError::NotFound)?;
    let checks = match &entry.provider {
        Ok(p) if p.is_demo => {
            vec![Check { what: "built-in demo provider".into(), ok: true, detail: "served by this instance".into() }]
        }
        Ok(p) => {
            let n = name.to_string();
            let cipher = app.cipher.clone();
            let set = app
                .db
                .run(move |conn| crate::vault::store::client_credentials(conn, &cipher, &n))
                .await?
                .is_some_and(|c| c.client_secret.is_some());
            managed::test_endpoints(&app.http, p, set).await
        }
        Err(why) => vec![Check { what: "settings".into(), ok: false, detail: why.clone() }],
    };
    tracing::info!(user_id = admin.0.id, provider = %name, passed = checks.iter().all(|c| c.ok), "provider tested");
    let extra = RowExtra { name: name.to_string(), checks: Some(checks), ..Default::default() };
    render(app, &admin, layout, AddDraft::default(), extra).await
}
